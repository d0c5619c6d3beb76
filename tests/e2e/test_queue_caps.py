"""Queue caps through the real doors: a flooding peer on the data channel gets `queue_full`
errors (only it), HTTP `speak` gets 429, and a peer's queue leaves with it. Real uvicorn,
real aiortc peers, real eSpeak NG."""

from __future__ import annotations

import httpx
import pytest

from agent.settings import Settings
from tests.conftest import start_agent, stop_agent
from tests.test_http_api import assert_problem, bearer

pytestmark = pytest.mark.e2e

LONG = "This sentence keeps the room busy while the queue fills up behind it. " * 6


@pytest.fixture
async def running():
    running = await start_agent(Settings(voice="espeak:en-us", room_grace_s=0, max_queue_per_sender=5))
    try:
        yield running
    finally:
        await stop_agent(running)


async def test_a_flooding_peer_is_capped_and_its_queue_leaves_with_it(running):
    flooder = await running.client("capped", "flooder")
    listener = await running.client("capped", "listener")
    try:
        flooder.send({"type": "synthesize", "text": LONG, "id": "f0"})
        for i in range(1, 11):
            flooder.send({"type": "synthesize", "text": f"short line {i}", "id": f"f{i}"})
        flooder.send({"type": "ping", "t": 1})
        await flooder.wait_event("pong", t=1)  # ordered channel: every answer is in
        assert [e["id"] for e in flooder.events_of("queued")] == [f"f{i}" for i in range(6)]
        full = flooder.events_of("error")
        assert [e["id"] for e in full] == [f"f{i}" for i in range(6, 11)]
        assert {e["code"] for e in full} == {"queue_full"}
        async with httpx.AsyncClient(base_url=running.base_url, timeout=20) as http:
            admin = bearer(running.admin_token())
            for i in range(5):  # another sender has its own share
                ok = await http.post("/v1/rooms/capped/speak", json={"text": f"ops {i}", "id": f"h{i}"}, headers=admin)
                assert ok.status_code == 202
            over = await http.post("/v1/rooms/capped/speak", json={"text": "ops 5", "id": "h5"}, headers=admin)
            assert assert_problem(over, 429, "queue_full")["id"] == "h5"
            assert over.headers["retry-after"] == "1"
        listener.send({"type": "ping", "t": 2})
        await listener.wait_event("pong", t=2)
        assert listener.events_of("error") == []  # the flooder's refusals went to it alone

        await flooder.close()  # its queued lines go; the one playing plays on
        flooder = None
        for i in range(1, 6):
            await listener.wait_event("interrupted", id=f"f{i}", reason="disconnect")
        room = running.agent.rooms.get("capped")
        assert [u.id for u in room.speaker.queue] == [f"h{i}" for i in range(5)]
        assert room.speaker.current is not None and room.speaker.current.id == "f0"
    finally:
        for client in (flooder, listener):
            if client is not None:
                await client.close()
