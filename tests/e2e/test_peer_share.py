"""What one token can take: its identity's share of a room's peer slots, one rate-limit bucket
however the token is spelled, and log lines it cannot forge. Real uvicorn, real aiortc offers."""

from __future__ import annotations

import io
import logging
import sys

import httpx
import pytest

from agent.logs import TextFormatter, escape_controls
from agent.settings import Settings
from tests.conftest import start_agent, stop_agent
from tests.test_http_api import assert_problem, bearer, real_offer

pytestmark = pytest.mark.e2e
SDP = {"Content-Type": "application/sdp"}


async def test_one_token_cannot_take_every_peer_slot_of_a_room():
    running = await start_agent(Settings(voice="espeak:en-us"))  # defaults: 50 peers a room, 5 per identity
    try:
        limit = running.agent.settings.max_peers_per_identity
        assert limit < running.agent.settings.max_peers_per_room
        token = bearer(running.token("stage", "grabby"))
        offer = await real_offer()
        async with httpx.AsyncClient(base_url=running.base_url, timeout=20) as http:
            for _ in range(limit):
                assert (await http.post("/v1/rooms/stage/whep", content=offer, headers=token | SDP)).status_code == 201
            over = await http.post("/v1/rooms/stage/whep", content=offer, headers=token | SDP)
            assert "max_peers_per_identity" in assert_problem(over, 429, "too_many_sessions")["detail"]
            assert over.headers["retry-after"]
            # others still get in, and the refusal left nothing behind
            other = await http.post("/v1/rooms/stage/whep", content=offer, headers=bearer(running.token("stage", "fair")) | SDP)
            assert other.status_code == 201
            # the cap is per room: the same identity may be in another room
            elsewhere = await http.post("/v1/rooms/side/whep", content=offer,
                                        headers=bearer(running.token("side", "grabby")) | SDP)
            assert elsewhere.status_code == 201
        assert len(running.agent.rooms.get("stage").peers) == limit + 1
        assert len(running.agent.webrtc.sessions) == limit + 2
    finally:
        await stop_agent(running)


async def test_a_respelled_token_shares_its_rate_bucket():
    running = await start_agent(Settings(rate_limit_per_min=6))  # a burst of 1, then one per 10 s
    try:
        token = running.token("lobby", "alice")
        async with httpx.AsyncClient(base_url=running.base_url) as http:
            first = await http.post("/v1/rooms/lobby/whep", content="x", headers=bearer(token) | SDP)
            assert_problem(first, 400)  # took the one request of the burst
            for spelling in (token + "=", running.token("lobby", "alice")):  # "=": still a valid JWT
                again = await http.post("/v1/rooms/lobby/whep", content="x", headers=bearer(spelling) | SDP)
                assert_problem(again, 429, "rate_limited")
            # another identity has its own bucket
            bob = await http.post("/v1/rooms/lobby/whep", content="x", headers=bearer(running.token("lobby", "bob")) | SDP)
            assert_problem(bob, 400)
    finally:
        await stop_agent(running)


async def test_an_identity_cannot_forge_a_text_log_line():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    running = await start_agent(Settings(voice="espeak:en-us"))
    forged = "eve\n2026-01-01 00:00:00,000 INFO agent.rooms: admin logged in\x00\r\u2028"
    try:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=20) as http:
            resp = await http.post("/v1/rooms/stage/whep", content=await real_offer(),
                                   headers=bearer(running.token("stage", forged)) | SDP)
            assert resp.status_code == 201
    finally:
        await stop_agent(running)
        root.removeHandler(handler)
        root.setLevel(level)
    lines = stream.getvalue().splitlines()
    joined = [line for line in lines if "peer joined" in line]
    assert joined and all("identity=eve\\n2026-01-01" in line for line in joined)
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines)
    assert "\x00" not in stream.getvalue() and "\u2028" not in stream.getvalue()


def test_text_logs_escape_control_characters_and_indent_tracebacks():
    record = logging.LogRecord("agent.x", logging.WARNING, __file__, 1, "bad %s", ("a\nb\x1b[31m",), None)
    record.peer = "p\r\n1"
    try:
        raise ValueError("boom\nINFO forged")
    except ValueError:
        record.exc_info = sys.exc_info()
    first, *rest = TextFormatter().format(record).split("\n")
    assert first.endswith("agent.x: bad a\\nb\\x1b[31m peer=p\\r\\n1")
    assert rest and all(line.startswith("  ") for line in rest)
    assert escape_controls("直播 café a b") == "直播 café a b"  # printable text is left alone
