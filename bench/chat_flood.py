"""A chat raid on the fake clock: 300 lines in 10 s into a room that reads about one a second
(the Speaker with danmu rules, the deterministic tone engine of tests/speaker_harness.py), with
and without the raid rules (`summary`, `max_speed`). Prints the backlog curve (queued lines,
per second) and the reading speed of each line; writes JSON and a plot to bench/results/.

It measures policy, not the machine: the same figures on any machine. Run: `python -m bench.chat_flood`.
"""

from __future__ import annotations

import asyncio

from tests.speaker_harness import chat_flood

from .common import plot_curves, print_table, write_result

BASE = {"max_queue": 10, "max_wait_s": 5}
RAID = BASE | {"summary": "and {n} more messages", "max_speed": 1.4}


async def run(rules: dict) -> dict:
    r = await chat_flood(300, 10.0, chars=100, rules=rules)
    s = r.stage
    per_second: dict[int, int] = {}
    for t, n in r.backlog:
        per_second[int(t)] = max(per_second.get(int(t), 0), n)
    dropped = [e["reason"] for e in s.of("dropped")]
    return {
        "rules": rules,
        "backlog_max_per_second": [per_second[k] for k in sorted(per_second)],
        "lines_read": sum(1 for e in s.of("finished") if not e["id"].startswith("summary")),
        "summaries": [t for t in s.engine.calls if t.startswith("and ")],
        "dropped": {k: dropped.count(k) for k in sorted(set(dropped))},
        "speeds": [round(sp, 3) for sp in s.engine.speeds],
        "drained_at_s": r.backlog[-1][0],
    }


def main(quick: bool = False) -> dict:
    plain, raid = asyncio.run(run(BASE)), asyncio.run(run(RAID))
    rows = [[name, r["lines_read"], len(r["summaries"]), r["dropped"].get("queue_full", 0),
             r["dropped"].get("expired", 0), max(r["speeds"]), r["drained_at_s"]]
            for name, r in (("max_queue 10, max_wait 5 s", plain), ("+ summary, max_speed 1.4", raid))]
    print_table("Raid: 300 chat lines in 10 s, a room reading ~1 line/s (fake clock)",
                ["rules", "read", "summaries", "queue_full", "expired", "top speed", "idle at s"], rows)
    print("backlog (max queued per second):")
    for name, r in (("plain", plain), ("raid", raid)):
        print(f"  {name:5s} {' '.join(f'{n:2d}' for n in r['backlog_max_per_second'])}")
    print(f"reading speed per line (raid rules): {' '.join(f'{v:g}' for v in raid['speeds'])}")
    print(f"summaries read: {raid['summaries']}")
    result = {"plain": plain, "raid": raid}
    x = {k: list(range(len(v["backlog_max_per_second"]))) for k, v in result.items()}
    plot = plot_curves("chat_flood", x, {"queued lines": {k: v["backlog_max_per_second"] for k, v in result.items()}},
                       "seconds since the raid began")
    print(f"-> {write_result('chat_flood', result)}" + (f", {plot}" if plot else ""))
    return result


if __name__ == "__main__":
    main()
