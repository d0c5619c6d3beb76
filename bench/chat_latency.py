"""Live chat latency: a line posted to an IRC channel (ngIRCd on loopback) → the first RTP packet of
its speech at a real aiortc client in the room. Everything in between runs as in production, each
in its own process: the IRC server, `tts-agent bridge irc`, and `tts-agent serve`.

Per line it also records when the room's `started` event reached the client and the agent's own
`ttfa_ms` (request received → first frame sent), so the chat hop (IRC server → bridge → HTTP)
can be told apart from synthesis.

Run: `python -m bench.chat_latency` (BENCH_QUICK=1 for 5 lines). Needs /usr/sbin/ngircd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass

from agent.client import RoomClient
from tests.e2e.test_bridge_irc import NgircdServer, Viewer

from .common import REPO_ROOT, our_agent, percentiles, print_table, room_token, use_loopback_ice, write_result

ROOM = "bench-chat"
CHANNEL = "#stream"
BRIDGE_NICK = "ttsbridge"
LINES = ("hello from chat number {i}", "great stream, line {i}", "what song is this, {i}?", "greetings to all, {i}")


@dataclass
class Sample:
    first_packet_ms: float | None = None  # posted → first RTP packet at the client
    started_event_ms: float | None = None  # posted → `started` reached the client
    agent_ttfa_ms: float | None = None  # the agent's request received → first frame sent


class Watcher(Viewer):
    """The chat user who posts; also sees the bridge join the channel."""

    def __init__(self, nick: str):
        super().__init__(nick)
        self.bridge_here = asyncio.Event()

    async def on_join(self, channel: str, user: str) -> None:
        await super().on_join(channel, user)
        if self.is_same_nick(user, BRIDGE_NICK):
            self.bridge_here.set()


async def measure(agent_url: str, n: int, warmup: int = 3) -> list[Sample]:
    use_loopback_ice()
    logging.basicConfig(level=logging.ERROR)  # pydle warns about every numeric it does not know
    irc = NgircdServer()
    await irc.start()
    client = RoomClient(agent_url, ROOM, room_token(ROOM, "bench"))
    await client.connect()
    viewer = Watcher("viewer")
    await viewer.connect("127.0.0.1", irc.port)
    await asyncio.wait_for(viewer.in_channel_now.wait(), 10)
    bridge = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "bridge", "irc", "--server", irc.address, "--channel", CHANNEL,
        "--nick", BRIDGE_NICK, "--room", ROOM, "--agent-url", agent_url, cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[Sample] = []
    try:
        await asyncio.wait_for(viewer.bridge_here.wait(), 30)
        for i in range(warmup + n):
            before = len(client.events_of("started"))
            sent = time.perf_counter()
            await viewer.message(CHANNEL, LINES[i % len(LINES)].format(i=i))
            packet = await client.wait_packet(after=sent, timeout=30)
            await _until(lambda: len(client.events_of("started")) > before)
            started = client.events_of("started")[before]
            # its first packet is all this measures: cut the rest (seconds of speech per line)
            client.send({"type": "interrupt", "id": started["id"]})
            await client.wait_event("interrupted", id=started["id"], timeout=30)
            if i >= warmup:
                samples.append(Sample(round((packet.arrival - sent) * 1000, 3),
                                      round((started["_arrival"] - sent) * 1000, 3), started.get("ttfa_ms")))
            await asyncio.sleep(random.uniform(0.02, 0.06))  # dither: do not phase-lock to the 20 ms grid
    finally:
        bridge.terminate()
        await bridge.wait()
        if viewer.connected:
            await viewer.disconnect()
        await client.close()
        await irc.cleanup()
    return samples


async def _until(condition, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


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
    with our_agent() as agent:
        samples = asyncio.run(measure(agent.base_url, n))
    summary = summarize(samples)
    rows = [[name, st["n"], st["p50"], st["p95"], st["max"]] for name, st in summary.items()]
    print_table(f"Chat line posted (IRC, loopback) -> first audio packet, {n} lines, eSpeak NG (ms)",
                ["measure", "n", "p50", "p95", "max"], rows)
    result = {"lines": n, "transport": "IRC (ngIRCd) -> tts-agent bridge irc -> HTTP speak -> WebRTC",
              **summary, "samples": [s.__dict__ for s in samples]}
    print(f"-> {write_result('chat_latency', result)}")
    return result


if __name__ == "__main__":
    main(bool(os.environ.get("BENCH_QUICK")))
