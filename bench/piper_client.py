"""`python -m bench.piper_client [--quick]`: the default voice (Piper en_US-joe-medium) at the
client, streaming within a sentence vs whole pieces, in one run (two agents side by side, one
utterance each in turn, so both see the same machine load).

- TTFA: `synthesize` sent by a real aiortc client → first RTP packet whose decoded audio is
  speech, by sentence length (short, medium, long, very long without commas); each text is
  new (no cache answers). An utterance is interrupted once 400 ms of it has arrived, and the
  next is sent once both agents are idle again.
- CPU per second of audio: the agent process's CPU over whole utterances played out.
- A reply streamed at 25 tokens a second (`final: false`, then one `append` per word): first
  token sent → first speech packet, and the largest gap between packets inside the reply.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

import numpy as np

from agent.client import RoomClient

from .common import ProcessMeter, ServerProcess, percentiles, print_table, room_token, use_loopback_ice, write_result
from .packets import is_speech, packet_levels_db

JOE = "piper:en_US-joe-medium"
MODES = ("streaming", "whole-piece")
CLASSES = {
    "short": "Item {i} is ready.",
    "medium": "Order number {i} has shipped today, and it should arrive on Friday.",
    "long": "Welcome back, guest number {i}: the room is ready, the coffee is hot, and the band "
            "will start to play in about ten minutes.",
    "very long, no commas": "Guest number {i} the quick brown fox jumps over the lazy dog while the band "
                            "plays on and the crowd cheers loudly for the home team that has never won a "
                            "single game in its long history",
}
REPLY = ("Sure thing {i}. The train to the city leaves at nine in the morning and arrives just after "
         "eleven, so you will have plenty of time for lunch before the meeting starts in the afternoon.")
TOKENS_PER_S = 25


def agent(mode: str) -> ServerProcess:
    argv = ["-m", "bench.piper_agent", "serve", "--log-level", "WARNING", "--voice", JOE]
    if mode == "whole-piece":
        argv.insert(2, "--whole-piece")
    return ServerProcess(argv, name=f"tts-agent-{mode}")


def _first_speech(client: RoomClient, start: int, sent: float) -> float | None:
    packets = client.packets[start:]
    if not packets:
        return None
    speech = is_speech(packet_levels_db([p.payload for p in packets]))
    idx = np.nonzero(speech)[0]
    return (packets[idx[0]].arrival - sent) * 1000 if idx.size else None


async def _until_packets(client: RoomClient, start: int, n: int, timeout: float = 30) -> None:
    deadline = time.perf_counter() + timeout
    while len(client.packets) - start < n and time.perf_counter() < deadline:
        last = client.packets[-1].arrival if client.packets else 0.0
        try:
            await client.wait_packet(last, timeout=max(0.1, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            break


async def ttfa_one(client: RoomClient, uid: str, text: str) -> float | None:
    start = len(client.packets)
    sent = client.send({"type": "synthesize", "id": uid, "text": text})
    await _until_packets(client, start, 20)  # 400 ms of it: the onset is in there
    client.send({"type": "interrupt", "id": uid})
    try:
        await client.wait_event("interrupted", timeout=10, id=uid)
    except asyncio.TimeoutError:
        pass
    await asyncio.sleep(0.1 + random.uniform(0, 0.04))  # the fade lands; dither off the 20 ms grid
    return _first_speech(client, start, sent)


async def quiet(meters: list[ProcessMeter], limit_s: float = 5.0) -> None:
    """Wait until no agent is still busy (an interrupted whole piece runs to its end): the
    next measurement must not share the cores with the previous one's leftovers."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        for m in meters:
            m.mark()
        await asyncio.sleep(0.1)  # a CPU share needs a window to be measured over
        if all(m.cpu_percent() < 10 for m in meters):
            return


async def play_whole(client: RoomClient, uid: str, text: str) -> float:
    client.send({"type": "synthesize", "id": uid, "text": text})
    finished = await client.wait_event("finished", timeout=120, id=uid)
    return finished["audio_ms"] / 1000


async def reply_one(client: RoomClient, uid: str, text: str) -> tuple[float | None, float]:
    """Stream `text` word by word at TOKENS_PER_S; (first token → speech ms, largest gap ms)."""
    words = text.split(" ")
    start = len(client.packets)
    sent = client.send({"type": "synthesize", "id": uid, "text": words[0] + " ", "final": False})
    for k, word in enumerate(words[1:], 1):
        await asyncio.sleep(max(0.0, sent + k / TOKENS_PER_S - time.perf_counter()))
        last = k == len(words) - 1
        client.send({"type": "append", "id": uid, "text": word + ("" if last else " "), "final": last})
    await client.wait_event("finished", timeout=120, id=uid)
    await asyncio.sleep(0.1)
    arrivals = np.array([p.arrival for p in client.packets[start:]])
    gap = float(np.diff(arrivals).max() * 1000) if arrivals.size > 1 else 0.0
    return _first_speech(client, start, sent), gap


async def measure(agents: dict[str, ServerProcess], n: int, replies: int, whole: int) -> dict:
    use_loopback_ice()
    clients = {}
    for mode, server in agents.items():
        room = f"bench-piper-{mode}"
        clients[mode] = RoomClient(server.base_url, room, room_token(room, "bench"))
        await clients[mode].connect()
    try:
        for mode, c in clients.items():  # warm: the voice loads on first use
            await play_whole(c, f"warm-{mode}", "Warming up the voice.")
        ttfa = {(m, k): [] for m in MODES for k in CLASSES}
        meters = [ProcessMeter(a.pid) for a in agents.values()]
        for i in range(n):
            for kind, template in CLASSES.items():
                for mode in MODES:
                    await quiet(meters)
                    value = await ttfa_one(clients[mode], f"t{i}-{kind[:4]}", template.format(i=i))
                    if value is not None:
                        ttfa[(mode, kind)].append(value)
        cpu = {}
        for mode in MODES:
            meter = ProcessMeter(agents[mode].pid)
            t0 = time.perf_counter()
            audio = 0.0
            for i in range(whole):
                audio += await play_whole(clients[mode], f"cpu{i}", CLASSES["long"].format(i=1000 + i))
            cpu[mode] = meter.cpu_percent() / 100 * (time.perf_counter() - t0) / audio
        reply = {m: ([], []) for m in MODES}
        for i in range(replies):
            for mode in MODES:
                await quiet(meters)
                first, gap = await reply_one(clients[mode], f"r{i}", REPLY.format(i=i))
                if first is not None:
                    reply[mode][0].append(first)
                reply[mode][1].append(gap)
    finally:
        for c in clients.values():
            await c.close()
    return {"ttfa": ttfa, "cpu": cpu, "reply": reply}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n, replies, whole = (3, 1, 1) if args.quick else (15, 5, 3)
    agents = {m: agent(m).start(timeout=120) for m in MODES}
    try:
        result = asyncio.run(measure(agents, n, replies, whole))
    finally:
        for a in agents.values():
            a.stop()
    rows = []
    for kind in CLASSES:
        for mode in MODES:
            st = percentiles(result["ttfa"][(mode, kind)])
            rows.append([kind, mode, st["n"], st["p50"], st["p95"], st["p99"]])
    print_table(f"TTFA at the client, first speech packet, {JOE} (ms); load average {os.getloadavg()[0]:.2f}",
                ["length", "mode", "n", "p50", "p95", "p99"], rows)
    base = result["cpu"]["whole-piece"]
    print_table("agent CPU seconds per second of audio", ["mode", "cpu s / audio s", "vs whole-piece"],
                [[m, round(v, 4), f"{100 * (v / base - 1):+.1f} %"] for m, v in result["cpu"].items()])
    rows = []
    for mode in MODES:
        first, gaps = result["reply"][mode]
        st = percentiles(first)
        rows.append([mode, st["n"], st["p50"], st["p95"], round(max(gaps), 1) if gaps else None])
    print_table(f"reply streamed at {TOKENS_PER_S} tokens/s (ms)",
                ["mode", "n", "first token → speech p50", "p95", "largest gap between packets"], rows)
    out = {
        "ttfa": {f"{m}/{k}": percentiles(v) for (m, k), v in result["ttfa"].items()},
        "cpu_per_audio_s": result["cpu"],
        "reply": {m: {"first_speech": percentiles(f), "max_gap_ms": max(g) if g else None}
                  for m, (f, g) in result["reply"].items()},
    }
    print(f"-> {write_result('piper_client', out)}")
    return out


if __name__ == "__main__":
    main()
