"""Idle cost: the server's CPU with N rooms that each have a connected peer and nothing to say,
against the same server with no rooms over an equal window, as % of one core per room.
"""

from __future__ import annotations

import asyncio
import os

import httpx

from .capacity import pinned
from .common import ProcessMeter, our_agent, print_table, room_token, use_loopback_ice, write_result
from .listener import connect_listeners


async def measure(base_url: str, pid: int, rooms: int, window_s: float) -> dict:
    use_loopback_ice()
    meter = ProcessMeter(pid)
    await asyncio.sleep(window_s)  # baseline window: the server with no rooms
    baseline_cpu = meter.cpu_percent()
    rss0 = meter.rss_mb()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        listeners = await connect_listeners(http, [f"idle-{i}" for i in range(rooms)], lambda r: room_token(r, "idle"))
        try:
            await asyncio.sleep(1.0)  # let the handshakes' tail (RTCP, SCTP acks) settle before measuring
            meter.mark()
            await asyncio.sleep(window_s)  # the measurement window
            cpu = meter.cpu_percent()
            rss = meter.rss_mb()
            packets = sum(len(l.arrivals) for l in listeners)
        finally:
            await asyncio.gather(*(l.close() for l in listeners), return_exceptions=True)
    per_room = max(cpu - baseline_cpu, 0.0) / rooms
    return {"rooms": rooms, "window_s": window_s, "baseline_cpu_pct": round(baseline_cpu, 3),
            "cpu_pct": round(cpu, 3), "cpu_pct_per_room": round(per_room, 4),
            "cpu_pct_per_room_raw": round(cpu / rooms, 4),  # without subtracting the empty server
            "rss_mb": round(rss, 1), "rss_per_idle_room_mb": round((rss - rss0) / rooms, 3),
            "audio_packets_received": packets}


def main(quick: bool = False) -> dict:
    rooms, window = (2, 2.0) if quick else (20, 30.0)
    with our_agent(cpus="0") as agent, pinned({1}):
        result = asyncio.run(measure(agent.base_url, agent.pid, rooms, window))
    print_table(f"Idle rooms (peer connected, nothing to say), {window:.0f} s window",
                ["rooms", "server CPU %", "empty server CPU %", "% core per room", "raw % per room", "RSS MB",
                 "audio packets"],
                [[rooms, result["cpu_pct"], result["baseline_cpu_pct"], result["cpu_pct_per_room"],
                  result["cpu_pct_per_room_raw"], result["rss_mb"], result["audio_packets_received"]]])
    print(f"-> {write_result('idle', result)}")
    return result


if __name__ == "__main__":
    main(bool(os.environ.get("BENCH_QUICK")))
