"""Live chat latency: a line posted to a Twitch-dialect chat server (tests/twitch_double.py on
loopback; Twitch itself cannot be reached here) → the first RTP packet of its speech at a real
aiortc client in the room. Everything after the chat server runs as in production, each in its
own process: `tts-agent bridge irc` (asking for Twitch's tags and commands) and `tts-agent serve`
with its default voice (the best installed English one) unless BENCH_CHAT_VOICE names another.

Per line it also records when the room's `started` event reached the client and the agent's own
`ttfa_ms` (request received → first frame sent), so the chat hop (chat server → bridge → HTTP)
can be told apart from synthesis. Each line is cut (a moderator's CLEARMSG, as the bridge
passes it on) once its first packet is in: only the first packet is measured.

Run: `python -m bench.chat_latency` (BENCH_QUICK=1 for 5 lines).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass

from agent.client import RoomClient
from tests.twitch_double import TwitchDouble

from .common import REPO_ROOT, our_agent, percentiles, print_table, room_token, use_loopback_ice, write_result

ROOM = "bench-chat"
CHANNEL = "#stream"
LINES = ("hello from chat number {i}", "great stream, line {i}", "what song is this, {i}?", "greetings to all, {i}")


@dataclass
class Sample:
    first_packet_ms: float | None = None  # posted → first RTP packet at the client
    started_event_ms: float | None = None  # posted → `started` reached the client
    agent_ttfa_ms: float | None = None  # the agent's request received → first frame sent


async def measure(agent_url: str, n: int, warmup: int = 3) -> tuple[list[Sample], str]:
    use_loopback_ice()
    chat = TwitchDouble()
    await chat.start()
    client = RoomClient(agent_url, ROOM, room_token(ROOM, "bench"))
    voice = (await client.connect())["voice"]
    bridge = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "bridge", "irc", "--server", chat.address, "--channel", CHANNEL,
        "--room", ROOM, "--agent-url", agent_url, cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[Sample] = []
    try:
        await chat.wait_joined(timeout=30)
        for i in range(warmup + n):
            sent = time.perf_counter()
            msg_id = chat.privmsg(CHANNEL, f"viewer{i % 7}", LINES[i % len(LINES)].format(i=i))
            packet = await client.wait_packet(after=sent, timeout=30)
            started = await client.wait_event("started", id=msg_id, timeout=30)
            # its first packet is all this measures: a moderator's delete cuts the rest
            chat.clearmsg(CHANNEL, f"viewer{i % 7}", msg_id, "")
            await client.wait_event("interrupted", id=msg_id, timeout=30)
            if i >= warmup:
                samples.append(Sample(round((packet.arrival - sent) * 1000, 3),
                                      round((started["_arrival"] - sent) * 1000, 3), started.get("ttfa_ms")))
            await asyncio.sleep(random.uniform(0.02, 0.06))  # dither: do not phase-lock to the 20 ms grid
    finally:
        bridge.terminate()
        await bridge.wait()
        await client.close()
        await chat.close()
    return samples, voice


def summarize(samples: list[Sample]) -> dict:
    chat_hop = [s.started_event_ms - s.agent_ttfa_ms for s in samples
                if s.started_event_ms is not None and s.agent_ttfa_ms is not None]
    return {
        "posted_to_first_packet_ms": percentiles(s.first_packet_ms for s in samples if s.first_packet_ms is not None),
        "posted_to_started_event_ms": percentiles(s.started_event_ms for s in samples
                                                  if s.started_event_ms is not None),
        "agent_ttfa_ms": percentiles(s.agent_ttfa_ms for s in samples if s.agent_ttfa_ms is not None),
        "chat_hop_ms (started - ttfa)": percentiles(chat_hop),
    }


def main(quick: bool = False) -> dict:
    n = 5 if quick else 50
    with our_agent(voice=os.environ.get("BENCH_CHAT_VOICE") or None) as agent:
        samples, voice = asyncio.run(measure(agent.base_url, n))
    summary = summarize(samples)
    rows = [[name, st["n"], st["p50"], st["p95"], st["max"]] for name, st in summary.items()]
    print_table(f"Chat line posted (Twitch-dialect IRC, loopback) -> first audio packet, {n} lines, {voice} (ms)",
                ["measure", "n", "p50", "p95", "max"], rows)
    result = {"lines": n, "voice": voice,
              "transport": "IRC (Twitch double) -> tts-agent bridge irc -> HTTP speak -> WebRTC",
              **summary, "samples": [s.__dict__ for s in samples]}
    print(f"-> {write_result('chat_latency', result)}")
    return result


if __name__ == "__main__":
    main(bool(os.environ.get("BENCH_QUICK")))
