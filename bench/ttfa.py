"""Time to first audio: `synthesize` sent by a real aiortc client → first RTP packet of that
utterance arriving at the client (tapped before aiortc's jitter buffer), and the agent's own
`ttfa_ms` (request received → first frame sent) from its `started` event.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import numpy as np

from agent.client import RoomClient

from .common import our_agent, percentiles, plot_distributions, print_table, room_token, use_loopback_ice, write_result
from .packets import is_speech, packet_levels_db

PHRASES = (
    "Item {i} is ready.", "Order {i} has shipped.", "Welcome, guest number {i}.", "Turn left in {i} metres.",
    "Question {i}: what time is it?", "Score update, {i} points.", "Room {i} is now open.",
)


def phrase(i: int) -> str:
    # a different text each time: no cache on any side can answer from memory
    return PHRASES[i % len(PHRASES)].format(i=i)


@dataclass
class Sample:
    sent: float  # perf_counter when `synthesize` left the client
    agent_ttfa_ms: float | None = None
    first_packet_ms: float | None = None
    first_speech_ms: float | None = None


async def measure(base_url: str, n: int, room: str = "bench-ttfa", warmup: int = 2) -> list[Sample]:
    """N utterances one after another in one room; each waits for the previous to finish."""
    use_loopback_ice()
    client = RoomClient(base_url, room, room_token(room, "bench"))
    await client.connect()
    samples: list[Sample] = []
    try:
        for i in range(warmup + n):
            uid = f"ttfa-{i}"
            sent = client.send({"type": "synthesize", "id": uid, "text": phrase(i)})
            await client.wait_event("finished", timeout=30, id=uid)
            started = next((e for e in client.events_of("started") if e.get("id") == uid), None)
            if i >= warmup:
                samples.append(Sample(sent, started.get("ttfa_ms") if started else None))
            await asyncio.sleep(random.uniform(0.02, 0.06))  # dither: do not phase-lock to the 20 ms grid
        _attribute_packets(client, samples)
    finally:
        await client.close()
    return samples


def _attribute_packets(client: RoomClient, samples: list[Sample]) -> None:
    """First packet, and first packet carrying speech, after each send (before the next)."""
    packets = client.packets
    arrivals = np.array([p.arrival for p in packets])
    speech = is_speech(packet_levels_db([p.payload for p in packets]))
    bounds = [s.sent for s in samples[1:]] + [float("inf")]
    for s, end in zip(samples, bounds):
        idx = np.nonzero((arrivals > s.sent) & (arrivals < end))[0]
        if idx.size:
            s.first_packet_ms = round((arrivals[idx[0]] - s.sent) * 1000, 3)
            spoken = idx[speech[idx]]
            if spoken.size:
                s.first_speech_ms = round((arrivals[spoken[0]] - s.sent) * 1000, 3)


def summarize(samples: list[Sample]) -> dict:
    return {
        "agent_ttfa_ms": percentiles(s.agent_ttfa_ms for s in samples if s.agent_ttfa_ms is not None),
        "client_first_packet_ms": percentiles(s.first_packet_ms for s in samples if s.first_packet_ms is not None),
        "client_first_speech_ms": percentiles(s.first_speech_ms for s in samples if s.first_speech_ms is not None),
    }


def main(quick: bool = False) -> dict:
    n = 5 if quick else 60
    with our_agent() as agent:
        samples = asyncio.run(measure(agent.base_url, n))
    summary = summarize(samples)
    rows = [[name, st["n"], st["p50"], st["p95"], st["p99"], st["max"]] for name, st in summary.items()]
    print_table(f"TTFA, {n} utterances, one room, eSpeak NG (ms)", ["measure", "n", "p50", "p95", "p99", "max"], rows)
    plot = plot_distributions("ttfa", {
        "agent ttfa_ms": [s.agent_ttfa_ms for s in samples if s.agent_ttfa_ms is not None],
        "client first RTP packet": [s.first_packet_ms for s in samples if s.first_packet_ms is not None],
    }, "ms")
    result = {"utterances": n, **summary, "samples": [s.__dict__ for s in samples], "plot": str(plot) if plot else None}
    print(f"-> {write_result('ttfa', result)}")
    return result
