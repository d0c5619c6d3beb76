"""Capacity: how many rooms can speak at once on one core, as a user reads it.

Capacity is the largest N such that N *and every step below it* hold >= 99.9 % on time both
at the client (RTP arrival within 10 ms of the stream's schedule, missing slots counted as
late) and at the agent (frames sent within 5 ms of their slot, unsent slots counted as late).
The first failing step is reported with its cause. `--ramps 3` runs three ramps, each on a
fresh server, and reports their median.

The server runs pinned to core 0 (`taskset -c 0`); this process, holding one cheap load
peer per room (agent/client.py without decoding) and a real Chromium listener in the first
room, pins itself to core 1. Each step adds rooms that speak continuously (a long text,
queued again when it finishes), waits for synthesis to settle, then measures a window:

- at the agent, from its Prometheus counters: frames sent, frames late, frames expected
  (rooms x the agent's own time / 20 ms), tick start lag and tick work, GC passes;
- at the load peers, from RTP arrivals: packets more than 10 ms later than the stream's best
  case, and slots missing from the timestamp grid. This is the only measure a server without
  our counters (the Pipecat peer) can be given, so the peer comparison uses it for both;
- at the Chromium listener, `concealedSamples / totalSamplesReceived` of its inbound audio
  (`getStats()`): what a person hears as glitches;
- server CPU (% of one core, all threads) and RSS, and per speaking room against the cost of
  Opus encoding alone, measured in the same run with the machine's reference speed.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import httpx
import numpy as np

from .common import (ProcessMeter, ServerProcess, our_agent, pinned, plot_curves, print_table, reference_speed,
                     room_token, run_queue_wait_s, scrape, use_loopback_ice, write_result)
from .listener import Listener, connect_listeners
from .packets import arrival_lateness, missing_packets

ON_TIME_TARGET = 0.999
AGENT_LATE_S = 0.005  # the agent's own counter: a frame sent more than this after its slot
CLIENT_LATE_S = 0.010  # at the client: an RTP packet arriving more than this after the stream's schedule
SATURATED_CPU_PCT = 90.0  # a process this busy is out of CPU, not stalled
CONTENDED_MS_PER_S = 10.0  # the loop's thread waiting this long on the run queue: other tasks have its core
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


def _client_window(listeners: list[Listener], starts: list[int]) -> dict:
    received = late = missing = 0
    for listener, start in zip(listeners, starts):
        arrivals = np.frombuffer(listener.arrivals, dtype=np.float64)
        stamps = np.frombuffer(listener.timestamps, dtype=np.int64)
        if arrivals.size == 0:
            continue
        lateness = arrival_lateness(arrivals, stamps)[start:]  # baseline: the whole stream so far
        received += lateness.size
        late += int((lateness > CLIENT_LATE_S).sum())
        missing += missing_packets(stamps[start:])
    expected = received + missing
    return {"packets": received, "late": late, "missing": missing, "late_after_ms": 1000 * CLIENT_LATE_S,
            "on_time": round((received - late) / expected, 6) if expected else None}


def _agent_window(before: dict, after: dict, rooms: int, elapsed: float) -> dict:
    sent = _delta(before, after, "tts_frames_sent_total")
    late = _delta(before, after, "tts_frames_late_total")
    # over the agent's own time between the two reads: the bench's window misses the time a
    # loaded server takes to answer a scrape (~1 % of frames at 150 rooms)
    agent_s = _delta(before, after, "tts_monotonic_seconds") or elapsed
    expected = rooms * agent_s / FRAME_S
    ticks = _delta(before, after, "tts_clock_tick_lag_seconds_count")
    return {
        "frames_sent": int(sent), "frames_late": int(late), "frames_expected": round(expected),
        "late_after_ms": 1000 * AGENT_LATE_S,
        "on_time": round((sent - late) / max(sent, expected), 6) if sent else None,
        "ticks": int(ticks),
        # a tick that starts late was held up by something else on the loop; a long tick is its own work
        "ticks_started_late": round(_share_above(before, after, "tts_clock_tick_lag_seconds", AGENT_LATE_S), 5),
        "ticks_long": round(_share_above(before, after, "tts_clock_tick_seconds", AGENT_LATE_S), 5),
        # the collector stops the loop: its passes in the window
        "gc": {gen: {"passes": int(_delta(before, after, f"tts_gc_pause_seconds_count{{generation={gen}}}")),
                     "ms": round(1000 * _delta(before, after, f"tts_gc_pause_seconds_sum{{generation={gen}}}"), 1),
                     "over_5ms": int(_count_above(before, after, "tts_gc_pause_seconds", AGENT_LATE_S,
                                                  f"generation={gen},"))}
               for gen in "012"},
    }


def _count_above(before: dict, after: dict, histogram: str, bound: float, labels: str = "") -> float:
    count = _delta(before, after, f"{histogram}_count" + (f"{{{labels.rstrip(',')}}}" if labels else ""))
    at_most = _delta(before, after, f"{histogram}_bucket{{{labels}le={bound}}}")
    return max(count - at_most, 0.0)


def _share_above(before: dict, after: dict, histogram: str, bound: float) -> float:
    count = _delta(before, after, f"{histogram}_count")
    return _count_above(before, after, histogram, bound) / count if count else 0.0


async def ramp(server: ServerProcess, steps: list[int], warmup_s: float, window_s: float, *,
               agent_counters: bool, encode_floor_us: float | None = None, browser: bool = True) -> list[dict]:
    use_loopback_ice()
    meter = ProcessMeter(server.pid)
    me = ProcessMeter(os.getpid())
    prev_rss, prev_rooms = meter.rss_mb(), 0  # RSS per room is the slope between steps
    results: list[dict] = []
    listeners: list[Listener] = []
    ear = None  # the Chromium listener, in the first room
    # no keep-alive: a connection the loaded server closed between steps made httpx fail a WHEP POST
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)
    meter.mark()
    await asyncio.sleep(min(window_s, 3.0))  # the server with no rooms: its own cost is not a room's
    empty_cpu = meter.cpu_percent()
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as http:
        try:
            for rooms in steps:
                t_connect = time.perf_counter()
                names = [f"load-{i}" for i in range(len(listeners), rooms)]
                fresh = await connect_listeners(http, names, lambda r: room_token(r, "load"))
                for i, listener in enumerate(fresh, start=len(listeners)):
                    listener.speak(long_text(i))
                listeners += fresh
                if browser and ear is None:
                    ear = await _open_ear(server.base_url, listeners[0].room)
                connect_s = time.perf_counter() - t_connect
                await asyncio.sleep(warmup_s)  # let the new rooms' first synthesis burst pass

                before = await asyncio.to_thread(scrape, server.base_url) if agent_counters else {}
                starts = [len(l.arrivals) for l in listeners]
                heard_before = await _heard(ear)
                meter.mark()
                me.mark()
                runq_before = run_queue_wait_s(server.pid)
                t0 = time.perf_counter()
                await asyncio.sleep(window_s)  # the measurement window
                elapsed = time.perf_counter() - t0
                cpu, load_cpu, rss = meter.cpu_percent(), me.cpu_percent(), meter.rss_mb()
                runq_after = run_queue_wait_s(server.pid)
                heard_after = await _heard(ear)
                after = await asyncio.to_thread(scrape, server.base_url) if agent_counters else {}

                step = {"rooms": rooms, "window_s": round(elapsed, 3), "connect_s": round(connect_s, 2),
                        "server_cpu_pct": round(cpu, 1), "server_rss_mb": round(rss, 1),
                        "rss_per_room_mb": round((rss - prev_rss) / (rooms - prev_rooms), 3),
                        "load_cpu_pct": round(load_cpu, 1),
                        # the server loop thread's wait for its core: a shared machine shows here
                        "loop_runq_ms_per_s": (round(1000 * (runq_after - runq_before) / elapsed, 1)
                                               if runq_before is not None and runq_after is not None else None),
                        "client": _client_window(listeners, starts)}
                if agent_counters:
                    step["agent"] = _agent_window(before, after, rooms, elapsed)
                step["listener"] = _concealment(heard_before, heard_after, ear)
                step["cost"] = room_cost(cpu, rooms, encode_floor_us, empty_cpu)
                step["failure"] = step_failure(step)
                results.append(step)
                prev_rss, prev_rooms = rss, rooms
                _print_step(step)
                # The capacity is decided at the first failing step; the next one says whether
                # it was a blip. Two failing steps in a row: nothing more to learn.
                if len(results) >= 2 and all(x["failure"] for x in results[-2:]):
                    break
        finally:
            for listener in listeners:
                listener.stop_speaking()
            if ear is not None:
                await ear.close()
            await asyncio.gather(*(l.close() for l in listeners), return_exceptions=True)
    return results


async def _open_ear(base_url: str, room: str):
    from .browser import ChromiumListener, chromium_missing

    why = chromium_missing()
    if why:
        print(f"  (no Chromium listener: {why})", flush=True)
        return None
    return await ChromiumListener.open(base_url, room, room_token(room, "chromium-ear"))


async def _heard(ear) -> dict | None:
    return None if ear is None else await ear.inbound_audio()


def _concealment(before: dict | None, after: dict | None, ear) -> dict | None:
    if ear is None or before is None or after is None:
        return None
    total = after["totalSamplesReceived"] - before["totalSamplesReceived"]
    concealed = after["concealedSamples"] - before["concealedSamples"]
    if after["connects"] != before["connects"]:  # a new peer connection: its counters started over
        return {"room": ear.room, "reconnected": True, "concealed_share": None}
    return {"room": ear.room, "samples": int(total), "concealed": int(concealed),
            "silent_concealed": int(after["silentConcealedSamples"] - before["silentConcealedSamples"]),
            "concealment_events": int(after["concealmentEvents"] - before["concealmentEvents"]),
            "concealed_share": round(concealed / total, 6) if total else None}


def room_cost(server_cpu_pct: float, rooms: int, encode_floor_us: float | None, empty_cpu_pct: float = 0.0) -> dict:
    """CPU per speaking room (% of one core, over what the server with no rooms takes) against
    Opus encoding alone (50 frames a second at the agent's encoder settings): how close the
    whole path is to its floor."""
    per_room = max(server_cpu_pct - empty_cpu_pct, 0.0) / rooms
    out = {"cpu_pct_per_room": round(per_room, 4), "us_per_frame": round(per_room / 100 / 50 * 1e6, 1),
           "empty_server_cpu_pct": round(empty_cpu_pct, 2)}
    if encode_floor_us:
        floor_pct = encode_floor_us * 50 / 1e6 * 100
        out.update(opus_floor_pct_per_room=round(floor_pct, 4), opus_floor_us_per_frame=round(encode_floor_us, 1),
                   ratio_to_floor=round(per_room / floor_pct, 2))
    return out


def _delta(before: dict, after: dict, key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


# -- the rule ------------------------------------------------------------------------------

def step_failure(step: dict, views: tuple[str, ...] = ("agent", "client")) -> str | None:
    """Why `step` misses the target in any of `views` (those it has), with the likely cause;
    None when it holds. A view with nothing measured fails: silence is not on time."""
    missed = []
    for view in views:
        figures = step.get(view)
        if figures is None:
            continue
        on_time = figures.get("on_time")
        if on_time is None:
            missed.append(f"{view}: nothing received")
        elif on_time < ON_TIME_TARGET:
            if view == "agent":
                unsent = max(figures["frames_expected"] - figures["frames_sent"], 0)
                missed.append(f"agent {_pct(on_time)} (late > {figures['late_after_ms']:.0f} ms: "
                              f"{figures['frames_late']}, unsent: {unsent})")
            else:
                missed.append(f"client {_pct(on_time)} (late > {figures['late_after_ms']:.0f} ms: "
                              f"{figures['late']}, missing: {figures['missing']})")
    if not missed:
        return None
    return "; ".join(missed) + " — " + _likely_cause(step)


def _likely_cause(step: dict) -> str:
    if step["server_cpu_pct"] >= SATURATED_CPU_PCT:
        return f"server saturated ({step['server_cpu_pct']:.0f} % of its core)"
    agent = step.get("agent")
    client_only = agent is None or (agent.get("on_time") or 0) >= ON_TIME_TARGET
    if client_only and step.get("load_cpu_pct", 0) >= SATURATED_CPU_PCT:
        return f"the load peers' core is saturated ({step['load_cpu_pct']:.0f} %): arrivals are stamped late"
    if agent is None:
        return f"server at {step['server_cpu_pct']:.0f} % CPU (no agent counters to say more)"
    gc_worst = sum(g["over_5ms"] for g in agent["gc"].values())
    parts = [f"loop stalls at {step['server_cpu_pct']:.0f} % CPU: {_pct(agent['ticks_started_late'])} of ticks "
             f"started > 5 ms late, {_pct(agent['ticks_long'])} took > 5 ms, {gc_worst} GC passes > 5 ms"]
    runq = step.get("loop_runq_ms_per_s")
    if runq is not None and runq >= CONTENDED_MS_PER_S:
        parts.append(f"its thread waited {runq:.0f} ms/s on the run queue: other tasks have its core")
    elif agent["ticks_started_late"] > 2 * agent["ticks_long"] and not gc_worst:
        parts.append("the loop is held between ticks")
    if client_only:
        parts = [f"only the client saw it, with the agent on time: the network path or the load peers "
                 f"({step.get('load_cpu_pct', 0):.0f} % CPU)"]
    return "; ".join(parts)


def capacity_of(steps: list[dict], views: tuple[str, ...] = ("agent", "client")) -> int:
    """The largest N such that the step at N and every step below it hold the target in every
    view (0 if the first step fails). Steps are taken in order of rooms."""
    capacity = 0
    for step in sorted(steps, key=lambda s: s["rooms"]):
        if step_failure(step, views) is not None:
            break
        capacity = step["rooms"]
    return capacity


def first_failure(steps: list[dict], views: tuple[str, ...] = ("agent", "client")) -> dict | None:
    """The first step (by rooms) that misses the target, with its cause; None if none does."""
    for step in sorted(steps, key=lambda s: s["rooms"]):
        cause = step_failure(step, views)
        if cause is not None:
            return {"rooms": step["rooms"], "cause": cause}
    return None


def median_capacity(capacities: list[int]) -> int:
    """The median of the ramps' capacities; of an even count, the lower middle (a step that
    was reached, never an average of two)."""
    return statistics.median_low(capacities) if capacities else 0


# -- reporting -----------------------------------------------------------------------------

def _print_step(s: dict) -> None:
    agent = s.get("agent", {})
    gc = agent.get("gc")
    gc_text = ", GC " + " ".join(f"gen{g} {v['passes']}x/{v['ms']:.0f} ms" for g, v in gc.items()) if gc else ""
    ear = s.get("listener")
    ear_text = f", Chromium concealed {_pct(ear['concealed_share'])}" if ear else ""
    print(f"  rooms {s['rooms']:4d}: on time agent {_pct(agent.get('on_time'))}, client {_pct(s['client']['on_time'])}"
          f"{ear_text}; server CPU {s['server_cpu_pct']:.0f} % ({s['cost']['cpu_pct_per_room']:.3f} %/room), "
          f"RSS {s['server_rss_mb']:.0f} MB, load CPU {s['load_cpu_pct']:.0f} %, loop run-queue wait "
          f"{s['loop_runq_ms_per_s'] if s['loop_runq_ms_per_s'] is not None else '-'} ms/s{gc_text}", flush=True)
    if s["failure"]:
        print(f"      fails: {s['failure']}", flush=True)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def plan(quick: bool) -> dict:
    if quick:
        return {"steps": [1, 2], "warmup_s": 0.5, "window_s": 1.5}
    return {"steps": [5, 10, 25, 50, 75, 100, 125, 150, 175, 200], "warmup_s": 2.0, "window_s": 6.0}


def run_pinned(server: ServerProcess, quick: bool, *, agent_counters: bool, encode_floor_us: float | None = None,
               browser: bool = True) -> list[dict]:
    p = plan(quick)
    with server, pinned({1}):
        return asyncio.run(ramp(server, p["steps"], p["warmup_s"], p["window_s"], agent_counters=agent_counters,
                                encode_floor_us=encode_floor_us, browser=browser))


def one_ramp(quick: bool, index: int) -> dict:
    speed = reference_speed(quick)  # on core 0, just before the server takes it
    print(f"ramp {index + 1}: reference speed {speed['opus_encodes_per_s']} Opus encodes/s, "
          f"10M-step Python loop {speed['python_loop_10M_s']:.3f} s (load average {speed['load_avg_1m']})",
          flush=True)
    steps = run_pinned(our_agent(cpus="0"), quick, agent_counters=True, encode_floor_us=speed["opus_encode_us"])
    return {"reference_speed": speed, "steps": steps, "capacity_rooms": capacity_of(steps),
            "first_failure": first_failure(steps)}


def main(quick: bool = False, ramps: int = 1) -> dict:
    print(f"Capacity: agent on core 0, load peers and a Chromium listener on core 1; {ramps} ramp(s)", flush=True)
    runs = [one_ramp(quick, i) for i in range(ramps)]
    cap = median_capacity([r["capacity_rooms"] for r in runs])
    median_run = min(runs, key=lambda r: (abs(r["capacity_rooms"] - cap), runs.index(r)))
    steps = median_run["steps"]
    rows = [[s["rooms"], _pct(s["agent"]["on_time"]), _pct(s["client"]["on_time"]),
             _pct((s.get("listener") or {}).get("concealed_share")), s["agent"]["frames_late"],
             max(s["agent"]["frames_expected"] - s["agent"]["frames_sent"], 0),
             _pct(s["agent"]["ticks_started_late"]), s["loop_runq_ms_per_s"], s["server_cpu_pct"],
             s["cost"]["cpu_pct_per_room"],
             s["cost"].get("ratio_to_floor"), s["server_rss_mb"], s["load_cpu_pct"]] for s in steps]
    print_table("Capacity (agent pinned to one core; the median ramp)",
                ["rooms", "agent ≤5 ms", "client ≤10 ms", "concealed", "late", "unsent", "ticks late",
                 "runq ms/s", "CPU %", "CPU %/room", "× Opus floor", "RSS MB", "load CPU %"], rows)
    for i, r in enumerate(runs):
        failure = r["first_failure"]
        print(f"ramp {i + 1}: capacity {r['capacity_rooms']} rooms; first failing step: "
              + (f"{failure['rooms']} rooms: {failure['cause']}" if failure else "none"))
    speed = median_run["reference_speed"]
    print(f"capacity: {cap} rooms (median of {ramps}), every step up to it >= {100 * ON_TIME_TARGET:.1f} % on time "
          f"at the client (10 ms) and the agent (5 ms); reference: {speed['opus_encodes_per_s']} Opus encodes/s, "
          f"Python loop {speed['python_loop_10M_s']:.3f} s")
    plot = plot_curves("capacity", {"agent": [s["rooms"] for s in steps], "client": [s["rooms"] for s in steps]}, {
        "on time %": {"agent": [100 * (s["agent"]["on_time"] or 0) for s in steps],
                      "client": [100 * (s["client"]["on_time"] or 0) for s in steps]},
        "server CPU %": {"agent": [s["server_cpu_pct"] for s in steps]},
        "RSS MB": {"agent": [s["server_rss_mb"] for s in steps]},
    }, "rooms speaking")
    result = {"capacity_rooms": cap, "ramp_capacities": [r["capacity_rooms"] for r in runs],
              "first_failure": median_run["first_failure"], "on_time_target": ON_TIME_TARGET,
              "late_after_ms": {"agent": 1000 * AGENT_LATE_S, "client": 1000 * CLIENT_LATE_S},
              "reference_speed": speed, "plan": plan(quick), "steps": steps, "ramps": runs,
              "plot": str(plot) if plot else None}
    print(f"-> {write_result('capacity', result)}")
    return result
