"""Every endpoint of the HTTP table (PROTOCOL.md): its success path and each refusal, with
problem JSON bodies. Real uvicorn, real aiortc peers, real eSpeak NG."""

from __future__ import annotations

import httpx
import pytest
from aiortc import RTCPeerConnection

from agent.settings import Settings
from tests.conftest import start_agent, stop_agent

VOICE = "espeak:en-us"
PROBLEM_FIELDS = {"type", "title", "status", "detail"}


def assert_problem(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert PROBLEM_FIELDS <= body.keys()
    assert body["status"] == status and body["detail"] and body["type"].startswith("https://")
    if code is not None:
        assert body["code"] == code, body
    return body


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def real_offer() -> str:
    """An SDP offer from a real aiortc peer: receive audio, data channel `tts`."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.createDataChannel("tts")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.fixture
async def http(running_agent):
    async with httpx.AsyncClient(base_url=running_agent.base_url, timeout=20) as client:
        yield client


@pytest.fixture
def admin(running_agent) -> dict:
    return bearer(running_agent.admin_token())


# -- voices, engines, health -------------------------------------------------------------------

async def test_voices_list_and_filter(http):
    voices = (await http.get("/v1/voices")).json()
    assert any(v["id"] == VOICE for v in voices)
    assert all({"id", "engine", "language", "name", "sample_rate"} <= v.keys() for v in voices)
    spanish = (await http.get("/v1/voices", params={"language": "es"})).json()
    assert spanish and all(v["language"] == "es" or v["language"].startswith("es-") for v in spanish)
    assert (await http.get("/v1/voices", params={"language": "qq"})).json() == []
    assert_problem(await http.get("/v1/voices", params={"language": "x" * 40}), 422, "bad_message")


async def test_engines_and_liveness(http):
    engines = (await http.get("/v1/engines")).json()
    assert any(e["name"] == "espeak" and e["available"] and e["voices"] > 50 for e in engines)
    assert (await http.get("/healthz")).json() == {"status": "ok"}


# -- unknown routes, methods, bodies -----------------------------------------------------------

async def test_unknown_route_and_method_are_problem_json(http):
    body = assert_problem(await http.get("/v1/nothing-here"), 404)
    assert "/v1/nothing-here" in body["detail"]
    resp = await http.delete("/v1/voices")
    assert_problem(resp, 405)
    assert "GET" in resp.headers["allow"]


async def test_body_cap_declared_and_streamed():
    running = await start_agent(Settings(max_body_bytes=1024))
    try:
        async with httpx.AsyncClient(base_url=running.base_url) as client:
            headers = bearer(running.admin_token())
            declared = await client.post("/v1/synthesize", json={"text": "x" * 2000}, headers=headers)
            assert "1024 bytes" in assert_problem(declared, 413)["detail"]

            async def chunks():  # no Content-Length: the cap must hold while reading
                yield b'{"text": "'
                for _ in range(10):
                    yield b"y" * 200
                yield b'"}'

            streamed = await client.post("/v1/synthesize", content=chunks(),
                                         headers=headers | {"Content-Type": "application/json"})
            assert "1024 bytes" in assert_problem(streamed, 413)["detail"]
            small = await client.post("/v1/synthesize", json={"text": "fits", "voice": VOICE}, headers=headers)
            assert small.status_code == 200
    finally:
        await stop_agent(running)


# -- tokens ------------------------------------------------------------------------------------

async def test_token_request_validation(http, admin):
    ok = await http.post("/v1/tokens", json={"room": "lobby", "identity": "bob", "ttl_s": 600}, headers=admin)
    assert ok.status_code == 200 and ok.json()["url"].startswith("http://127.0.0.1")
    bad_room = await http.post("/v1/tokens", json={"room": "no spaces/here", "identity": "bob"}, headers=admin)
    assert assert_problem(bad_room, 422, "bad_message")["errors"][0]["loc"] == ["body", "room"]
    unknown = await http.post("/v1/tokens", json={"room": "lobby", "identity": "bob", "roomz": 1}, headers=admin)
    assert_problem(unknown, 422, "bad_message")


# -- rooms -------------------------------------------------------------------------------------

async def test_rooms_list_and_detail(running_agent, clients, http, admin):
    await clients("lobby", "alice")
    rooms = (await http.get("/v1/rooms", headers=admin)).json()
    assert [r["room"] for r in rooms] == ["lobby"]
    detail = (await http.get("/v1/rooms/lobby", headers=admin)).json()
    assert [p["identity"] for p in detail["peers"]] == ["alice"]
    assert detail["playing"] is None and detail["queue"] == []
    assert_problem(await http.get("/v1/rooms/nowhere", headers=admin), 404, "unknown_room")
    assert_problem(await http.get("/v1/rooms"), 401, "unauthorized")
    room_token = bearer(running_agent.token("lobby", "alice"))
    assert "roomAdmin" in assert_problem(await http.get("/v1/rooms/lobby", headers=room_token), 403)["detail"]


async def test_detail_shows_what_is_playing_and_queued(clients, http, admin):
    await clients("lobby")
    long = "This sentence keeps the room busy for a while, long enough to look at it. " * 3
    await http.post("/v1/rooms/lobby/speak", json={"text": long, "id": "now", "voice": VOICE}, headers=admin)
    await http.post("/v1/rooms/lobby/speak", json={"text": "later", "id": "next", "priority": "high"}, headers=admin)
    detail = (await http.get("/v1/rooms/lobby", headers=admin)).json()
    assert detail["playing"]["id"] == "now"
    assert detail["queue"] == [{"id": "next", "priority": "high", "text": "later"}]
    await http.post("/v1/rooms/lobby/interrupt", headers=admin)  # no body: everything stops


async def test_speak_over_http_gives_the_same_events_as_the_data_channel(clients, http, admin):
    alice = await clients("lobby", "alice")
    resp = await http.post("/v1/rooms/lobby/speak", json={"text": "Hello from HTTP.", "voice": VOICE, "id": "h1"},
                           headers=admin)
    assert resp.status_code == 202
    assert resp.json() == {"id": "h1", "room": "lobby", "status": "queued"}
    for type_ in ("queued", "started", "caption", "finished"):
        await alice.wait_event(type_, id="h1")
    auto = await http.post("/v1/rooms/lobby/speak", json={"text": "An id is chosen for me."}, headers=admin)
    assert auto.status_code == 202 and auto.json()["id"]


async def test_speak_refusals(running_agent, clients, http, admin):
    await clients("lobby")
    await http.post("/v1/rooms/lobby/speak", json={"text": "first", "id": "dup", "voice": VOICE}, headers=admin)
    dup = await http.post("/v1/rooms/lobby/speak", json={"text": "again", "id": "dup"}, headers=admin)
    assert assert_problem(dup, 409, "duplicate_id")["errors"][0]["loc"] == ["body", "id"]
    too_long = "x" * (running_agent.agent.settings.max_text_chars + 1)
    long_resp = await http.post("/v1/rooms/lobby/speak", json={"text": too_long}, headers=admin)
    assert assert_problem(long_resp, 422, "text_too_long")["errors"][0]["loc"] == ["body", "text"]
    voice = await http.post("/v1/rooms/lobby/speak", json={"text": "hi", "voice": "nope:nope"}, headers=admin)
    assert assert_problem(voice, 422, "unknown_voice")["errors"][0]["loc"] == ["body", "voice"]
    typo = await http.post("/v1/rooms/lobby/speak", json={"text": "hi", "priorty": "high"}, headers=admin)
    assert "priorty" in assert_problem(typo, 422, "bad_message")["detail"]
    wrong_type = await http.post("/v1/rooms/lobby/speak", json={"text": 5}, headers=admin)
    assert_problem(wrong_type, 422, "bad_message")
    assert_problem(await http.post("/v1/rooms/empty/speak", json={"text": "hi"}, headers=admin), 404, "unknown_room")
    room_token = bearer(running_agent.token("lobby"))
    assert_problem(await http.post("/v1/rooms/lobby/speak", json={"text": "hi"}, headers=room_token), 403)
    assert_problem(await http.post("/v1/rooms/lobby/speak", json={"text": "hi"}), 401)
    # the refusals changed nothing: only "dup" was ever queued
    detail = (await http.get("/v1/rooms/lobby", headers=admin)).json()
    assert [u["id"] for u in detail["queue"]] + ([detail["playing"]["id"]] if detail["playing"] else []) in ([], ["dup"])


async def test_interrupt_over_http(clients, http, admin):
    alice = await clients("lobby")
    long = "A long announcement that will be cut short by an operator. " * 4
    await http.post("/v1/rooms/lobby/speak", json={"text": long, "id": "cut", "voice": VOICE}, headers=admin)
    await alice.wait_event("started", id="cut")
    resp = await http.post("/v1/rooms/lobby/interrupt", json={"id": "cut"}, headers=admin)
    assert resp.status_code == 202 and resp.json() == {"id": "cut", "room": "lobby", "status": "interrupted"}
    assert (await alice.wait_event("interrupted", id="cut"))["reason"] == "interrupt"
    unknown = await http.post("/v1/rooms/lobby/interrupt", json={"id": "never"}, headers=admin)
    assert_problem(unknown, 404, "unknown_utterance")
    assert_problem(await http.post("/v1/rooms/lobby/interrupt", json={"idd": "x"}, headers=admin), 422, "bad_message")
    assert (await http.post("/v1/rooms/lobby/interrupt", headers=admin)).json()["id"] == "*"


async def test_pause_and_resume_over_http(clients, http, admin):
    alice = await clients("lobby")
    long = "A long announcement that the host holds. It goes on after the break. " * 3
    await http.post("/v1/rooms/lobby/speak", json={"text": long, "id": "held", "voice": VOICE}, headers=admin)
    await alice.wait_event("started", id="held")
    resp = await http.post("/v1/rooms/lobby/pause", json={"now": True}, headers=admin)
    assert resp.status_code == 202 and resp.json() == {"id": "*", "room": "lobby", "status": "paused"}
    paused = await alice.wait_event("paused")
    assert paused["id"] == "held" and paused["reason"] == "pause"
    assert (await http.get("/v1/rooms/lobby", headers=admin)).json()["paused"] is True
    await http.post("/v1/rooms/lobby/speak", json={"text": "Meanwhile.", "id": "later", "voice": VOICE}, headers=admin)
    await alice.wait_event("queued", id="later")
    assert_problem(await http.post("/v1/rooms/lobby/pause", json={"now": 1}, headers=admin), 422, "bad_message")
    assert_problem(await http.post("/v1/rooms/nowhere/resume", headers=admin), 404, "unknown_room")
    resp = await http.post("/v1/rooms/lobby/resume", headers=admin)
    assert resp.status_code == 202 and resp.json()["status"] == "resumed"
    assert (await alice.wait_event("resumed"))["id"] == "held"
    await alice.wait_event("finished", id="held")
    await alice.wait_event("finished", id="later")
    assert [e["type"] for e in alice.events if e.get("id") in ("held", "later") and e["type"] in
            ("started", "paused", "resumed", "finished")] == ["started", "paused", "resumed", "finished", "started",
                                                              "finished"]


async def test_interrupt_from_over_http_cancels_that_senders_utterances(clients, http, admin):
    alice = await clients("lobby")
    long = "A long chat line that keeps the room busy for a while. " * 4
    for uid, sender in (("m1", "mallory"), ("ok", "olivia"), ("m2", "mallory")):
        await http.post("/v1/rooms/lobby/speak", json={"text": long, "id": uid, "from": sender, "voice": VOICE},
                        headers=admin)
    await alice.wait_event("started", id="m1")
    resp = await http.post("/v1/rooms/lobby/interrupt", json={"from": "mallory"}, headers=admin)
    assert resp.status_code == 202 and resp.json()["status"] == "interrupted"
    await alice.wait_event("interrupted", id="m1")
    await alice.wait_event("interrupted", id="m2")
    await alice.wait_event("started", id="ok")
    both = await http.post("/v1/rooms/lobby/interrupt", json={"id": "ok", "from": "olivia"}, headers=admin)
    assert_problem(both, 422, "bad_message")


async def test_room_scoped_admin_token_speaks_only_into_its_room(running_agent, clients, http):
    await clients("lobby")
    await clients("backstage")
    scoped = bearer(running_agent.agent.tokens.mint("svc", room="lobby", admin=True))
    assert (await http.post("/v1/rooms/lobby/speak", json={"text": "hi"}, headers=scoped)).status_code == 202
    assert_problem(await http.post("/v1/rooms/backstage/speak", json={"text": "hi"}, headers=scoped), 403)
    assert_problem(await http.get("/v1/rooms", headers=scoped), 403)


async def test_speak_rate_limit_is_429_with_retry_after():
    running = await start_agent(Settings(rate_limit_per_min=6))  # burst of 1
    try:
        async with httpx.AsyncClient(base_url=running.base_url) as client:
            headers = bearer(running.admin_token())
            first = await client.post("/v1/rooms/lobby/speak", json={"text": "hi"}, headers=headers)
            assert_problem(first, 404)  # counted, though the room does not exist
            limited = await client.post("/v1/rooms/lobby/speak", json={"text": "hi"}, headers=headers)
            assert_problem(limited, 429, "rate_limited")
            assert 1 <= int(limited.headers["retry-after"]) <= 10
    finally:
        await stop_agent(running)


# -- WHEP --------------------------------------------------------------------------------------

async def test_whep_session_lifecycle(running_agent, http):
    token = bearer(running_agent.token("lobby", "alice"))
    resp = await http.post("/v1/rooms/lobby/whep", content=await real_offer(),
                           headers=token | {"Content-Type": "application/sdp"})
    assert resp.status_code == 201
    assert resp.headers["content-type"] == "application/sdp" and resp.text.startswith("v=0")
    location = resp.headers["location"]
    assert location.startswith("/v1/rooms/lobby/whep/")
    other = bearer(running_agent.token("lobby", "mallory"))
    assert_problem(await http.delete(location, headers=other), 403)
    assert (await http.delete(location, headers=token)).status_code == 200
    assert_problem(await http.delete(location, headers=token), 404)
    assert (await http.options("/v1/rooms/lobby/whep")).headers["accept-post"] == "application/sdp"


async def test_whep_refusals(running_agent, http):
    lobby = bearer(running_agent.token("lobby"))
    sdp = {"Content-Type": "application/sdp"}
    wrong_room = await http.post("/v1/rooms/backstage/whep", content=await real_offer(), headers=lobby | sdp)
    assert "'lobby'" in assert_problem(wrong_room, 403)["detail"]
    assert_problem(await http.post("/v1/rooms/lobby/whep", content="v=0", headers=sdp), 401)
    assert_problem(await http.post("/v1/rooms/lobby/whep", content="{}", headers=lobby | {"Content-Type": "application/json"}), 415)
    assert_problem(await http.post("/v1/rooms/lobby/whep", content="hello", headers=lobby | sdp), 400, "bad_offer")
    no_media = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    assert_problem(await http.post("/v1/rooms/lobby/whep", content=no_media, headers=lobby | sdp), 400, "bad_offer")
    assert_problem(await http.patch("/v1/rooms/lobby/whep/abc", headers=lobby), 405)
    assert running_agent.agent.rooms.rooms == {}  # nothing was opened by the refusals


async def test_peer_cap_and_room_cap_are_503_with_a_reason():
    running = await start_agent(Settings(max_peers_per_room=1, max_rooms=1))
    first = await running.client("lobby", "alice")
    try:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=20) as client:
            sdp = {"Content-Type": "application/sdp"}
            full_room = await client.post("/v1/rooms/lobby/whep", content=await real_offer(),
                                          headers=bearer(running.token("lobby", "bob")) | sdp)
            assert "peers" in assert_problem(full_room, 503, "capacity")["detail"]
            assert full_room.headers["retry-after"]
            no_room = await client.post("/v1/rooms/backstage/whep", content=await real_offer(),
                                        headers=bearer(running.token("backstage", "carol")) | sdp)
            assert "rooms" in assert_problem(no_room, 503, "capacity")["detail"]
        assert list(running.agent.rooms.rooms) == ["lobby"]
        assert len(running.agent.rooms.get("lobby").peers) == 1
    finally:
        await first.close()
        await stop_agent(running)


async def test_whep_rate_limit_is_429():
    running = await start_agent(Settings(rate_limit_per_min=6))
    try:
        async with httpx.AsyncClient(base_url=running.base_url) as client:
            headers = bearer(running.token("lobby")) | {"Content-Type": "application/sdp"}
            assert_problem(await client.post("/v1/rooms/lobby/whep", content="x", headers=headers), 400)
            limited = await client.post("/v1/rooms/lobby/whep", content="x", headers=headers)
            assert_problem(limited, 429, "rate_limited")
            assert int(limited.headers["retry-after"]) >= 1
    finally:
        await stop_agent(running)


# -- OpenAPI -----------------------------------------------------------------------------------

async def test_openapi_covers_the_http_table(http):
    schema = (await http.get("/openapi.json")).json()
    paths = schema["paths"]
    for path, method in [("/v1/rooms/{room}/whep", "post"), ("/v1/rooms/{room}/whep/{session_id}", "delete"),
                         ("/v1/tokens", "post"), ("/v1/voices", "get"), ("/v1/rooms", "get"),
                         ("/v1/rooms/{room}", "get"), ("/v1/rooms/{room}/speak", "post"),
                         ("/v1/rooms/{room}/interrupt", "post"), ("/v1/rooms/{room}/pause", "post"),
                         ("/v1/rooms/{room}/resume", "post"), ("/v1/synthesize", "post"),
                         ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get")]:
        assert method in paths[path], (method, path)
    speak = paths["/v1/rooms/{room}/speak"]["post"]
    assert {"202", "401", "403", "404", "409", "422", "429"} <= speak["responses"].keys()
    assert set(paths["/v1/synthesize"]["post"]["responses"]["200"]["content"]) == {"audio/wav", "audio/ogg", "audio/mpeg"}
    assert (await http.get("/docs")).status_code == 200
