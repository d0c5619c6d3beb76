"""Interrupt latency: `interrupt` sent by the client → the last packet of that utterance
arriving at the client. The agent sends nothing after an utterance ends (nothing queued
behind it), so the last packet is the last one before the stream goes quiet.
"""

from __future__ import annotations

import asyncio
import random

from agent.client import RoomClient

from .common import (our_agent, percentiles, plot_distributions, print_table, room_token, scrape,
                     use_loopback_ice, write_result)

LONG_TEXT = ("This sentence is long on purpose, so that there is always more to say when the interrupt "
             "arrives, number {i}. And it goes on for a while after that, too.")
QUIET_S = 0.2  # ten frame slots with no packet: the utterance is over


async def last_packet_after(client: RoomClient, after: float) -> float:
    """Arrival time of the last packet before the stream has been quiet for QUIET_S."""
    last = after
    while True:
        try:
            await client.wait_packet(last, timeout=QUIET_S)
        except asyncio.TimeoutError:
            return last
        last = max(p.arrival for p in client.packets[-8:])


async def measure(base_url: str, n: int, room: str = "bench-interrupt") -> list[dict]:
    use_loopback_ice()
    client = RoomClient(base_url, room, room_token(room, "bench"))
    await client.connect()
    samples = []
    try:
        for i in range(n):
            uid = f"int-{i}"
            client.send({"type": "synthesize", "id": uid, "text": LONG_TEXT.format(i=i)})
            started = await client.wait_event("started", timeout=30, id=uid)
            # interrupt somewhere 5..25 frames into the speech, waiting on packets, not on time
            for _ in range(random.randint(5, 25)):
                await client.wait_packet(client.packets[-1].arrival if client.packets else started["_arrival"])
            sent = client.send({"type": "interrupt", "id": uid})
            interrupted = await client.wait_event("interrupted", timeout=10, id=uid)
            last = await last_packet_after(client, sent)
            samples.append({"client_last_packet_ms": round((last - sent) * 1000, 3) if last > sent else 0.0,
                            "interrupted_event_ms": round((interrupted["_arrival"] - sent) * 1000, 3),
                            "played_ms": interrupted.get("played_ms")})
    finally:
        await client.close()
    return samples


def main(quick: bool = False) -> dict:
    n = 4 if quick else 40
    with our_agent() as agent:
        samples = asyncio.run(measure(agent.base_url, n))
        m = scrape(agent.base_url)
    agent_count = m.get("tts_interrupt_latency_seconds_count", 0)
    agent_mean_ms = 1000 * m.get("tts_interrupt_latency_seconds_sum", 0) / agent_count if agent_count else None
    summary = {
        "client_last_packet_ms": percentiles((s["client_last_packet_ms"] for s in samples), (50, 95, 99)),
        "interrupted_event_ms": percentiles((s["interrupted_event_ms"] for s in samples), (50, 95, 99)),
        "agent_interrupt_latency_mean_ms": round(agent_mean_ms, 3) if agent_mean_ms is not None else None,
    }
    rows = [[k, v["n"], v["p50"], v["p95"], v["p99"], v["max"]] for k, v in summary.items() if isinstance(v, dict)]
    print_table(f"Interrupt → last speech packet, {n} utterances (ms)", ["measure", "n", "p50", "p95", "p99", "max"], rows)
    print(f"agent's own histogram (interrupt received → last frame sent), mean: {summary['agent_interrupt_latency_mean_ms']} ms")
    plot = plot_distributions("interrupt", {"interrupt → last packet": [s["client_last_packet_ms"] for s in samples]}, "ms")
    result = {"utterances": n, **summary, "samples": samples, "plot": str(plot) if plot else None}
    print(f"-> {write_result('interrupt', result)}")
    return result
