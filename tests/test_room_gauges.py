"""`tts_peers` and `tts_rooms` after peers join and leave in every order, in both transports:
real aiortc peers through WHEP, and the LiveKit transport with the real (never connected)
`rtc.Room` of tests/test_livekit_transport.py standing in for a server."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from livekit import rtc

from agent import metrics
from agent.rooms import RoomRegistry
from agent.settings import Settings
from agent.transports.livekit import LiveKitTransport
from engines.registry import VoiceRegistry
from tests.conftest import shared_engines, start_agent, stop_agent
from tests.test_livekit_transport import CapturedPublisher, participant


def gauges() -> tuple[float, float]:
    return metrics.PEERS._value.get(), metrics.ROOMS._value.get()


async def until(predicate, timeout: float = 20.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


@pytest.mark.e2e
async def test_whep_peers_in_every_order_leave_the_gauges_at_zero():
    before = gauges()
    running = await start_agent(Settings(voice="espeak:en-us", room_grace_s=0))
    try:
        for order in itertools.permutations(range(3)):
            clients = [await running.client("gauged", f"p{i}") for i in range(3)]
            assert gauges() == (before[0] + 3, before[1] + 1)
            for i in order:
                await clients[i].close()
            await until(lambda: running.agent.rooms.get("gauged") is None and gauges() == before)
    finally:
        await stop_agent(running)
    assert gauges() == before


@pytest.mark.parametrize("order", [("alice", "bob"), ("bob", "alice"), ("leave",)])
async def test_livekit_participants_in_every_order_leave_the_gauges_at_zero(order):
    before = gauges()
    settings = Settings(room_grace_s=0, voice="espeak:en-us")
    registry = RoomRegistry(settings, VoiceRegistry(shared_engines(), settings.voice))
    transport = LiveKitTransport(registry, publisher_factory=CapturedPublisher)
    for round_ in range(3):  # the same room again and again: nothing accumulates
        lk_room = rtc.Room()
        session = await transport.attach(lk_room, "lobby")
        people = {name: participant(name) for name in ("alice", "bob")}
        for p in people.values():
            lk_room.emit("participant_connected", p)
        assert gauges() == (before[0] + 1, before[1] + 1)  # the SFU is the room's one peer
        if order == ("leave",):
            await transport.leave(session)  # the agent leaves with people still in the room
        else:
            for name in order:
                lk_room.emit("participant_disconnected", people[name])
            await until(lambda: session.left.is_set())  # the grace period ran out: the agent left
        assert registry.get("lobby") is None
        assert gauges() == before, (order, round_)
    await transport.drain(timeout=0)
    assert gauges() == before
