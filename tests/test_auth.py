"""Tokens: LiveKit access tokens (real livekit-api, real HS256 JWTs) at every door."""

from __future__ import annotations

import datetime

import httpx
import pytest
from livekit import api

from agent.auth import AuthError, TokenAuthority
from agent.client import RoomClient
from agent.runtime import Agent
from agent.settings import Settings
from control_api import create_app
from tests.conftest import shared_engines, start_agent, stop_agent

OLD, NEW = ("key-2024", "s" * 32), ("key-2025", "t" * 32)


def livekit_token(key: str, secret: str, *, identity: str = "svc", ttl_s: int = 600, **grants) -> str:
    """A token as livekit-api clients make them (not through our TokenAuthority)."""
    return (api.AccessToken(key, secret).with_identity(identity)
            .with_grants(api.VideoGrants(**grants)).with_ttl(datetime.timedelta(seconds=ttl_s)).to_jwt())


# -- TokenAuthority ---------------------------------------------------------------------------

def test_minted_room_token_carries_its_grants():
    authority = TokenAuthority(dict([OLD]))
    p = authority.verify(authority.mint("alice", room="lobby", name="Alice", can_publish_data=False))
    assert (p.identity, p.name, p.room, p.room_join, p.room_admin) == ("alice", "Alice", "lobby", True, False)
    assert p.can_subscribe and not p.can_publish_data


@pytest.mark.parametrize("token, reason", [
    (livekit_token(*OLD, ttl_s=-3600, room_join=True, room="lobby"), "expired"),
    (livekit_token("someone-else", "x" * 32, room_join=True, room="lobby"), "issuer is not a known API key"),
    (livekit_token(OLD[0], "not-the-secret-" * 3, room_join=True, room="lobby"), "signature does not match"),
    ("not.a.jwt", "not a JWT"),
    ("", "not a JWT"),
])
def test_bad_tokens_are_401_with_a_reason(token, reason):
    with pytest.raises(AuthError) as err:
        TokenAuthority(dict([OLD])).verify(token)
    assert err.value.status == 401
    assert reason in err.value.reason


def test_a_token_without_expiry_is_refused():
    import jwt

    forever = jwt.encode({"iss": OLD[0], "sub": "x", "video": {"roomAdmin": True}}, OLD[1], algorithm="HS256")
    with pytest.raises(AuthError) as err:
        TokenAuthority(dict([OLD])).verify(forever)
    assert err.value.status == 401 and "exp" in err.value.reason


def test_rotation_every_configured_key_pair_verifies_and_the_first_mints():
    authority = TokenAuthority(dict([NEW, OLD]))
    assert authority.verify(livekit_token(*OLD, room_join=True, room="a")).room == "a"
    assert authority.verify(livekit_token(*NEW, room_join=True, room="b")).room == "b"
    import jwt

    assert jwt.decode(authority.mint("x", room="c"), options={"verify_signature": False})["iss"] == NEW[0]
    # the old pair retired: its tokens stop working
    with pytest.raises(AuthError, match="issuer"):
        TokenAuthority(dict([NEW])).verify(livekit_token(*OLD, room_join=True, room="a"))


def test_room_tokens_open_only_their_room():
    authority = TokenAuthority(dict([OLD]))
    token = authority.mint("alice", room="lobby")
    assert authority.for_room(token, "lobby").identity == "alice"
    with pytest.raises(AuthError) as err:
        authority.for_room(token, "backstage")
    assert err.value.status == 403 and "'lobby'" in err.value.reason
    with pytest.raises(AuthError) as err:
        authority.admin(token)
    assert err.value.status == 403 and "roomAdmin" in err.value.reason


def test_grants_must_be_literally_true_to_open():
    authority = TokenAuthority(dict([OLD]))
    stringly = livekit_token(*OLD, room_join="false", room="lobby", room_admin="false")  # type: ignore[arg-type]
    p = authority.verify(stringly)
    assert not p.room_join and not p.room_admin


def test_admin_tokens_limited_to_a_room_open_only_that_room():
    authority = TokenAuthority(dict([OLD]))
    scoped = livekit_token(*OLD, room_admin=True, room="lobby")  # what livekit-api's RoomService sends
    assert authority.admin(scoped, "lobby").room_admin
    with pytest.raises(AuthError, match="limited to room 'lobby'"):
        authority.admin(scoped, "backstage")
    with pytest.raises(AuthError, match="not about one room"):
        authority.admin(scoped)
    assert authority.admin(authority.mint("ops", admin=True)).room_admin


# -- over HTTP --------------------------------------------------------------------------------

def asgi_client(settings: Settings, client_addr: str = "127.0.0.1") -> httpx.AsyncClient:
    app = create_app(Agent(settings, shared_engines()))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(client_addr, 40000)),
                             base_url="http://127.0.0.1")  # a Host this agent answers to


@pytest.mark.parametrize("token, reason", [
    (None, "missing bearer token"),
    (livekit_token("devkey", "secret", ttl_s=-3600, room_admin=True), "expired"),
    (livekit_token("intruder", "secret", room_admin=True), "issuer"),
    (livekit_token("devkey", "guessed-secret", room_admin=True), "signature"),
])
async def test_http_401_names_the_reason(token, reason):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with asgi_client(Settings()) as client:
        for method, path in (("GET", "/v1/rooms"), ("POST", "/v1/rooms/lobby/whep"), ("POST", "/v1/synthesize")):
            resp = await client.request(method, path, headers=headers, json={"text": "hi"})
            assert resp.status_code == 401, path
            assert resp.headers["content-type"] == "application/problem+json"
            assert resp.headers["www-authenticate"].startswith("Bearer")
            problem = resp.json()
            assert problem["status"] == 401 and problem["title"] == "Unauthorized"
            assert reason in problem["detail"]


async def test_several_key_pairs_work_over_http():
    async with asgi_client(Settings(api_keys=dict([NEW, OLD]))) as client:
        for pair in (OLD, NEW):
            resp = await client.get("/v1/rooms", headers={"Authorization": f"Bearer {livekit_token(*pair, room_admin=True)}"})
            assert resp.status_code == 200, pair


async def test_tokens_endpoint_is_open_in_dev_mode_to_loopback_only():
    body = {"room": "lobby", "identity": "alice"}
    async with asgi_client(Settings()) as local:
        resp = await local.post("/v1/tokens", json=body)
        assert resp.status_code == 200
        assert TokenAuthority({"devkey": "secret"}).for_room(resp.json()["token"], "lobby").identity == "alice"
    async with asgi_client(Settings(), client_addr="203.0.113.9") as remote:
        resp = await remote.post("/v1/tokens", json=body)
        assert resp.status_code == 401 and resp.json()["detail"] == "missing bearer token"
    # with real keys configured, even loopback needs an admin token
    async with asgi_client(Settings(api_keys=dict([OLD]))) as local:
        assert (await local.post("/v1/tokens", json=body)).status_code == 401
        room_token = livekit_token(*OLD, room_join=True, room="lobby")
        refused = await local.post("/v1/tokens", json=body, headers={"Authorization": f"Bearer {room_token}"})
        assert refused.status_code == 403
        admin = livekit_token(*OLD, room_admin=True)
        ok = await local.post("/v1/tokens", json=body, headers={"Authorization": f"Bearer {admin}"})
        assert ok.status_code == 200


# -- grants on a real WebRTC peer -------------------------------------------------------------

@pytest.mark.e2e
async def test_listen_only_token_hears_http_speech_but_its_commands_are_unauthorized():
    running = await start_agent()
    listener = RoomClient(running.base_url, "stage", running.token("stage", "viewer", can_publish_data=False))
    try:
        await listener.connect()
        async with httpx.AsyncClient(base_url=running.base_url, timeout=20) as http:
            resp = await http.post("/v1/rooms/stage/speak", json={"text": "Hello viewers.", "voice": "espeak:en-us"},
                                   headers={"Authorization": f"Bearer {running.admin_token()}"})
        assert resp.status_code == 202
        uid = resp.json()["id"]
        await listener.wait_event("finished", id=uid)
        assert len(listener.packets) > 20  # it heard the utterance: Opus packets arrived
        listener.send({"type": "synthesize", "text": "let me speak", "id": "mine"})
        error = await listener.wait_event("error", id="mine")
        assert error["code"] == "unauthorized"
        listener.send({"type": "interrupt"})
        # the data channel is ordered: when the pong is back, the interrupt's answer is too
        listener.send({"type": "ping", "t": 7})
        await listener.wait_event("pong", t=7)  # ping needs no grant
        codes = [e["code"] for e in listener.events_of("error")]
        assert codes == ["unauthorized", "unauthorized"]
        assert [e["id"] for e in listener.events_of("queued")] == [uid]  # "mine" never queued
    finally:
        await listener.close()
        await stop_agent(running)


@pytest.mark.e2e
async def test_can_subscribe_false_is_403_at_whep():
    running = await start_agent()
    deaf = RoomClient(running.base_url, "stage", running.token("stage", "deaf", can_subscribe=False))
    try:
        with pytest.raises(RuntimeError, match="403"):
            await deaf.connect()
    finally:
        await deaf.close()
        await stop_agent(running)
