"""Queue flood: one peer sends `synthesize` on its data channel as fast as it can for a while;
what the agent holds afterwards. With `--before DIR` the same run is made against another
checkout (e.g. the commit before the queue caps), alternating, so both see the same machine.

    python -m bench.queue_flood --seconds 15 --repeats 3 [--before /tmp/old-checkout]

Per run: messages sent, `queued` and `queue_full` answers, the room's queue length, and the
agent's RSS before the flood, after it, and after the flooder left (a listener keeps the room).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import httpx

from .common import ProcessMeter, ServerProcess, our_agent, print_table, room_token, use_loopback_ice, write_result

ROOM = "queue-flood"


async def flood_once(base_url: str, pid: int, seconds: float) -> dict:
    from agent.auth import TokenAuthority
    from agent.client import RoomClient
    from agent.settings import DEV_KEY, DEV_SECRET

    use_loopback_ice()
    meter = ProcessMeter(pid)
    admin = {"Authorization": "Bearer " + TokenAuthority({DEV_KEY: DEV_SECRET}).mint("bench", admin=True)}
    listener = RoomClient(base_url, ROOM, room_token(ROOM, "listener"))
    flooder = RoomClient(base_url, ROOM, room_token(ROOM, "flooder"))
    await listener.connect()
    await flooder.connect()
    rss0 = meter.rss_mb()
    sent = 0
    end = time.monotonic() + seconds
    channel = flooder.channel
    while time.monotonic() < end:
        if channel.bufferedAmount > 256 * 1024:  # let SCTP drain: the agent, not our buffer, is the limit
            await asyncio.sleep(0.005)
            continue
        sent += 1
        flooder.send({"type": "synthesize", "text": f"flood line number {sent}, read it aloud"})
        if sent % 50 == 0:
            await asyncio.sleep(0)
    flooder.send({"type": "ping", "t": 1})
    await flooder.wait_event("pong", timeout=300, t=1)  # every message before it has been handled
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        queue = len((await http.get(f"/v1/rooms/{ROOM}", headers=admin)).json()["queue"])
        rss_flood = meter.rss_mb()
        await flooder.close()
        listener.send({"type": "ping", "t": 2})
        await listener.wait_event("pong", t=2)
        await asyncio.sleep(1.0)  # let the interrupted events and freed buffers settle before reading RSS
        queue_left = len((await http.get(f"/v1/rooms/{ROOM}", headers=admin)).json()["queue"])
        rss_left = meter.rss_mb()
    result = {
        "sent": sent,
        "queued": len(flooder.events_of("queued")),
        "queue_full": sum(1 for e in flooder.events_of("error") if e.get("code") == "queue_full"),
        "rate_limited": sum(1 for e in flooder.events_of("error") if e.get("code") == "rate_limited"),
        "queue_after_flood": queue,
        "queue_after_leave": queue_left,
        "rss_before_mb": round(rss0, 1),
        "rss_after_flood_mb": round(rss_flood, 1),
        "rss_after_leave_mb": round(rss_left, 1),
    }
    await listener.close()
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.queue_flood")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--before", type=Path, help="another checkout to run the same flood against")
    args = ap.parse_args(argv)
    sides = [("after", None)] + ([("before", args.before)] if args.before else [])
    runs: dict[str, list[dict]] = {name: [] for name, _ in sides}
    for _ in range(args.repeats):
        for name, root in sides:
            server = our_agent()
            server.name = f"queue-flood-{name}"
            if root is not None:
                server.cwd = root
            with server:
                runs[name].append(asyncio.run(flood_once(server.base_url, server.pid, args.seconds)))
    keys = list(next(iter(runs.values()))[0])
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    print_table(f"Queue flood: one peer, {args.seconds:g} s, medians of {args.repeats}",
                ["measure", *runs], [[k, *(medians[n][k] for n in runs)] for k in keys])
    write_result("queue_flood", {"seconds": args.seconds, "runs": runs, "medians": medians})
    return medians


if __name__ == "__main__":
    main()
