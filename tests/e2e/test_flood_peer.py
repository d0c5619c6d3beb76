"""A peer flooding its data channel (4000 messages in 2 s, through a real aiortc peer): it is
told `rate_limited` at most once a second, then disconnected; another room goes on."""

from __future__ import annotations

import asyncio
import logging

import pytest

pytestmark = pytest.mark.e2e

MESSAGES = 4000
SECONDS = 2.0
BATCH = 100


async def until(predicate, timeout: float = 30.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_a_flooding_peer_is_rate_limited_then_disconnected(running_agent, clients, caplog):
    caplog.set_level(logging.WARNING, logger="agent.rooms")
    other = await clients("neighbour", "other")
    flooder = await clients("flooded", "flooder")
    bystander = await clients("flooded", "bystander")
    other.send({"type": "synthesize", "id": "on", "text": "The neighbour keeps talking through it all."})
    await other.wait_event("started", id="on")
    sent = 0
    for _ in range(MESSAGES // BATCH):  # 4000 messages spread over 2 s: 2000 a second
        if flooder.channel.readyState != "open":
            break
        for _ in range(BATCH):
            flooder.channel.send('{"type":"synthesize"}')  # each one accepted would cost an error reply
            sent += 1
        await asyncio.sleep(SECONDS * BATCH / MESSAGES)  # pacing the sender, not waiting for a result
    await until(lambda: not any(s.identity == "flooder" for s in running_agent.agent.webrtc.sessions.values()))
    limited = [e for e in flooder.events_of("error") if e["code"] == "rate_limited"]
    assert 1 <= len(limited) <= SECONDS + 2, limited  # at most one a second, and the last word
    assert len(flooder.events_of("error")) < sent, "dropped messages were not each answered"
    assert any("kept flooding" in r.getMessage() for r in caplog.records)
    # the room and its other peer go on; so does the other room
    assert [s.identity for s in running_agent.agent.webrtc.sessions.values() if s.room.name == "flooded"] == [
        "bystander"]
    bystander.send({"type": "ping", "t": "still"})
    await bystander.wait_event("pong", t="still")
    assert not bystander.events_of("error")
    await other.wait_event("finished", id="on")
