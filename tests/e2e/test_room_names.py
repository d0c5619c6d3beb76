"""Rooms named in any script work through every door (WHEP, its Location, speak, interrupt,
room detail); names that would break a header, a path or a log line are 400 problem JSON and
open nothing. Real uvicorn, real aiortc peers, real eSpeak NG."""

from __future__ import annotations

import httpx
import pytest

from agent.client import RoomClient
from agent.room_names import room_path
from agent.settings import Settings
from tests.conftest import start_agent, stop_agent
from tests.test_http_api import assert_problem, bearer, real_offer

pytestmark = pytest.mark.e2e

LONG = "This sentence keeps the room busy long enough to interrupt it. " * 4


@pytest.fixture
async def running():
    running = await start_agent(Settings(voice="espeak:en-us", room_grace_s=0))
    try:
        yield running
    finally:
        await stop_agent(running)


@pytest.mark.parametrize("name", ["直播", "café", "a b"])
async def test_every_door_works_for_a_room_named_in_any_script(running, name):
    client = RoomClient(running.base_url, name, running.token(name, "viewer"))
    admin = bearer(running.admin_token())
    try:
        ready = await client.connect()
        assert ready["room"] == name
        assert client.location.isascii() and client.location.startswith(f"/v1/rooms/{room_path(name)}/whep/")
        async with httpx.AsyncClient(base_url=running.base_url, timeout=20) as http:
            path = f"/v1/rooms/{room_path(name)}"
            spoken = await http.post(f"{path}/speak", json={"text": LONG, "id": "s1"}, headers=admin)
            assert spoken.status_code == 202 and spoken.json()["room"] == name
            await client.wait_event("started", id="s1")
            detail = await http.get(path, headers=admin)
            assert detail.status_code == 200
            assert detail.json()["room"] == name and detail.json()["playing"]["id"] == "s1"
            cut = await http.post(f"{path}/interrupt", json={"id": "s1"}, headers=admin)
            assert cut.status_code == 202
            await client.wait_event("interrupted", id="s1")
            # the Location resolves: DELETE on it ends exactly this session
            gone = await http.delete(client.location, headers=bearer(client.token))
            assert gone.status_code == 200, gone.text
        assert running.agent.webrtc.sessions == {}
        client.location = None  # already ended
    finally:
        await client.close()


BAD_NAMES = ["a\x00b", "a\r\nb", "a\x1bb", "..", "a..b", "x" * 129, "a\u202eb"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
async def test_bad_names_are_400_everywhere_and_open_nothing(running, name):
    admin = bearer(running.admin_token())
    path = "/v1/rooms/" + room_path(name).replace(".", "%2E")  # %2E: no client folds a dot segment away
    offer = await real_offer()
    async with httpx.AsyncClient(base_url=running.base_url, timeout=20) as http:
        for method, url, kwargs in [
            ("POST", f"{path}/whep", {"content": offer, "headers": admin | {"Content-Type": "application/sdp"}}),
            ("DELETE", f"{path}/whep/abc", {"headers": admin}),
            ("GET", path, {"headers": admin}),
            ("POST", f"{path}/speak", {"json": {"text": "hello"}, "headers": admin}),
            ("POST", f"{path}/interrupt", {"headers": admin}),
        ]:
            resp = await http.request(method, url, **kwargs)
            assert "room name" in assert_problem(resp, 400, "bad_room")["detail"], (method, url)
        minted = await http.post("/v1/tokens", json={"room": name, "identity": "mallory"})
        assert_problem(minted, 422, "bad_message")
        assert (await http.get("/healthz")).status_code == 200  # the connection and server are fine
    assert running.agent.webrtc.sessions == {}
    assert running.agent.rooms.rooms == {}
