"""Hostile HTTP against a real agent (uvicorn + h11): broken SDP offers, oversized and slow
bodies, header abuse. Each gets its status, and nothing is left behind: no WHEP session, no
room peer, no RTCPeerConnection that is not closed. (Token refusals: tests/test_auth.py.)

Raw requests go through asyncio sockets, because an HTTP client library will not send
most of these.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from aiortc import RTCPeerConnection

from agent.settings import Settings
from tests.conftest import start_agent, stop_agent
from tests.e2e.test_faults import RecordingPeerConnection, recorded_pcs  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

MAX_BODY = 64 * 1024
BODY_TIMEOUT_S = 1.0  # asked for where the agent has such a setting (see test_stalled_body_gets_408)


@pytest.fixture
async def running(recorded_pcs):  # noqa: F811
    extra = {"body_timeout_s": BODY_TIMEOUT_S} if "body_timeout_s" in Settings.model_fields else {}
    running = await start_agent(Settings(room_grace_s=0, max_body_bytes=MAX_BODY, **extra))
    try:
        yield running
    finally:
        await stop_agent(running)


@pytest.fixture
async def offer() -> str:
    """A real offer, as an aiortc client makes it: recvonly audio and the `tts` data channel."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.createDataChannel("tts")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def assert_nothing_left(running, recorded) -> None:
    assert running.agent.webrtc.sessions == {}
    assert all(not room.peers for room in running.agent.rooms.rooms.values())
    assert all(pc.connectionState == "closed" for pc in recorded), [pc.connectionState for pc in recorded]


async def post_offer(running, body: str | bytes, room: str = "hostile") -> httpx.Response:
    async with httpx.AsyncClient(base_url=running.base_url, timeout=20) as http:
        return await http.post(f"/v1/rooms/{room}/whep", content=body, headers={
            "Content-Type": "application/sdp", "Authorization": f"Bearer {running.token(room)}"})


def sections(sdp: str) -> tuple[str, list[str]]:
    """(session part, media sections) of an SDP."""
    parts = re.split(r"(?=^m=)", sdp, flags=re.M)
    return parts[0], parts[1:]


def broken_offers(sdp: str) -> dict[str, str | bytes]:
    session, media = sections(sdp)
    audio = next(m for m in media if m.startswith("m=audio"))
    cuts = {f"truncated at {f:.0%}": sdp[: int(len(sdp) * f)] for f in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95)}
    return {
        "empty": "",
        "garbage": "hello, I am not an SDP offer",
        "not UTF-8": b"v=0\r\n\xff\xfe\xfd",
        "version line only": "v=0\r\n",
        "media line only": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
        "no audio, video only": session + audio.replace("m=audio", "m=video", 1),
        "no ICE credentials": "\r\n".join(l for l in sdp.split("\r\n") if not l.startswith("a=ice-")),
        "100 media sections": session + "".join(
            f"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\na=recvonly\r\n" for i in range(100)),
        "control characters": sdp.replace("a=", "a\x00=", 3),
        **cuts,
    }


async def test_broken_offers_get_400_and_leave_nothing(running, recorded_pcs, offer):  # noqa: F811
    for name, body in broken_offers(offer).items():
        r = await post_offer(running, body)
        assert r.status_code == 400, (name, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("application/problem+json"), name
        assert_nothing_left(running, recorded_pcs)
    # and the door still works for an honest offer
    c = await running.client("hostile", "honest")
    await c.close()


async def test_offer_without_dtls_fingerprint_gets_400(running, recorded_pcs, offer):  # noqa: F811
    body = "\r\n".join(l for l in offer.split("\r\n") if not l.startswith("a=fingerprint"))
    try:
        r = await post_offer(running, body)
        assert r.status_code == 400, r.text[:200]
        assert_nothing_left(running, recorded_pcs)
    finally:
        for sid in list(running.agent.webrtc.sessions):
            await running.agent.webrtc.end(sid)


async def test_oversized_bodies_get_413(running, recorded_pcs, offer):  # noqa: F811
    huge = offer + "a=x-padding:" + "p" * MAX_BODY + "\r\n"
    r = await post_offer(running, huge)  # declared by Content-Length
    assert r.status_code == 413, r.text[:200]

    async def chunks():
        for _ in range(MAX_BODY // 1024 + 8):
            yield b"a=x-padding:" + b"p" * 1012

    async with httpx.AsyncClient(base_url=running.base_url, timeout=20) as http:
        r = await http.post("/v1/rooms/hostile/whep", content=chunks(), headers={  # chunked, no length
            "Content-Type": "application/sdp", "Authorization": f"Bearer {running.token('hostile')}"})
    assert r.status_code == 413, r.text[:200]
    assert_nothing_left(running, recorded_pcs)


# -- raw HTTP/1.1 -------------------------------------------------------------------------

async def raw_exchange(running, head: str, body: bytes = b"", *, trickle: float | None = None,
                       timeout: float = 10) -> tuple[int | None, bytes]:
    """Send a raw request (the body byte by byte every `trickle` s if given); returns the
    status (None if the server closed without one) and the raw response."""
    port = int(running.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1"))
        if trickle is None:
            writer.write(body)
        else:
            for i in range(len(body)):
                writer.write(body[i:i + 1])
                await writer.drain()
                await asyncio.sleep(trickle)  # the attack itself: a slow client
        await writer.drain()
        response = await asyncio.wait_for(reader.read(4096), timeout)
    finally:
        writer.close()
    match = re.match(rb"HTTP/1\.1 (\d{3})", response)
    return (int(match.group(1)) if match else None), response


def whep_head(running, extra: str = "", content_length: int | str | None = None) -> str:
    length = f"Content-Length: {content_length}\r\n" if content_length is not None else ""
    return (f"POST /v1/rooms/hostile/whep HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {running.token('hostile')}\r\nContent-Type: application/sdp\r\n"
            f"{extra}{length}Connection: close\r\n\r\n")


async def test_header_abuse_gets_400(running, recorded_pcs):  # noqa: F811
    body = b"v=0\r\n"
    cases = {
        "one 70 KB header": whep_head(running, "X-Big: " + "a" * 70_000 + "\r\n", len(body)),
        "2000 headers": whep_head(running, "".join(f"X-H{i}: {i}\r\n" for i in range(2000)), len(body)),
        "Content-Length not a number": whep_head(running, content_length="abc"),
        "negative Content-Length": whep_head(running, content_length=-5),
        "two different Content-Lengths": whep_head(running, "Content-Length: 3\r\n", len(body)),
        "Content-Length with chunked": whep_head(running, "Transfer-Encoding: chunked\r\n", len(body)),
        "header without a colon": whep_head(running, "this is not a header\r\n", len(body)),
        "NUL in a header value": whep_head(running, "X-Nul: a\x00b\r\n", len(body)),
    }
    for name, head in cases.items():
        status, response = await raw_exchange(running, head, body)
        assert status == 400, (name, response[:200])
    async with httpx.AsyncClient(base_url=running.base_url) as http:
        assert (await http.get("/healthz")).status_code == 200
    assert_nothing_left(running, recorded_pcs)
    assert len(recorded_pcs) == 0  # refused before any peer connection existed


async def test_slow_but_complete_body_is_answered(running, recorded_pcs):  # noqa: F811
    body = b"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    status, response = await raw_exchange(running, whep_head(running, content_length=len(body)), body, trickle=0.02)
    assert status == 400, response[:300]
    assert b"neither audio nor a data channel" in response
    assert_nothing_left(running, recorded_pcs)


async def test_body_shorter_than_its_content_length_leaves_nothing(running, recorded_pcs):  # noqa: F811
    port = int(running.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(whep_head(running, content_length=1000).encode() + b"v=0\r\n")
    await writer.drain()
    writer.close()  # the client goes away mid-body
    await writer.wait_closed()
    async with httpx.AsyncClient(base_url=running.base_url) as http:
        assert (await http.get("/healthz")).status_code == 200
    assert_nothing_left(running, recorded_pcs)
    assert len(recorded_pcs) == 0


async def test_stalled_body_gets_408(running, recorded_pcs):  # noqa: F811
    # 10 of the promised 500 bytes, then silence (slowloris)
    status, response = await raw_exchange(running, whep_head(running, content_length=500), b"v=0\r\nm=aud",
                                          timeout=BODY_TIMEOUT_S + 4)
    assert status == 408, response[:200]
    assert_nothing_left(running, recorded_pcs)
