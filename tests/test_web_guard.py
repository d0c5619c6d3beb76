"""Dev mode cannot be driven from the web: Host checked (DNS rebinding), no CORS unless
configured, dev token minting refused to pages of other origins, a maximum token lifetime,
no short API secrets. (Real Chromium on two origins: tests/e2e/test_browser_origin.py.)"""

from __future__ import annotations

import datetime

import httpx
import pytest
from livekit import api
from pydantic import ValidationError

from agent.auth import AuthError, TokenAuthority
from agent.settings import Settings
from tests.test_auth import asgi_client, livekit_token
from tests.test_http_api import assert_problem

BODY = {"room": "lobby", "identity": "alice"}
PAGE = "http://127.0.0.1:40001"  # another port of the same host: another origin, `same-site`


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8080", "127.0.0.1.nip.io", "10.0.0.1"])
async def test_a_foreign_host_header_is_refused(host):
    async with asgi_client(Settings()) as client:
        for method, path in (("POST", "/v1/tokens"), ("GET", "/v1/voices"), ("GET", "/demo")):
            resp = await client.request(method, path, json=BODY, headers={"Host": host})
            assert_problem(resp, 400, "bad_host")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8080", "localhost:8080", "[::1]:8080", "LOCALHOST"])
async def test_loopback_names_are_this_agent_on_loopback(host):
    async with asgi_client(Settings()) as client:
        assert (await client.post("/v1/tokens", json=BODY, headers={"Host": host})).status_code == 200


async def test_allowed_hosts_and_public_url_add_names():
    settings = Settings(allowed_hosts=["agent.internal"], public_url="https://tts.example.org/")
    async with asgi_client(settings) as client:
        for host in ("agent.internal:8080", "tts.example.org"):
            assert (await client.get("/v1/voices", headers={"Host": host})).status_code == 200, host
        assert_problem(await client.get("/v1/voices", headers={"Host": "other.example"}), 400, "bad_host")


@pytest.mark.parametrize("headers", [
    {"Origin": PAGE},
    {"Origin": "null"},  # a sandboxed frame or a file:// page
    {"Origin": "http://localhost:8080"},  # another name for the same port is another origin
    {"Sec-Fetch-Site": "same-site"},  # no Origin (a GET), but the browser says where it comes from
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"},
])
async def test_dev_mode_refuses_pages_of_other_origins(headers):
    admin = {"Authorization": f"Bearer {livekit_token('devkey', 'secret', room_admin=True)}"}
    async with asgi_client(Settings()) as client:
        assert_problem(await client.post("/v1/tokens", json=BODY, headers=headers), 403, "unauthorized")
        # a page that signs its own token with the public dev secret gets nothing either
        assert_problem(await client.get("/v1/rooms", headers=headers | admin), 403, "unauthorized")
        assert_problem(await client.options("/v1/tokens", headers=headers | {
            "Access-Control-Request-Method": "POST"}), 403)


async def test_dev_mode_takes_same_origin_pages_and_navigations():
    async with asgi_client(Settings()) as client:
        same = await client.post("/v1/tokens", json=BODY, headers={"Origin": "http://127.0.0.1",
                                                                   "Sec-Fetch-Site": "same-origin"})
        assert same.status_code == 200
        assert "access-control-allow-origin" not in same.headers  # no CORS unless configured
        link = await client.get("/demo", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
        assert link.status_code == 200  # a link to the demo from elsewhere opens it


async def test_configured_cors_origins_are_allowed_and_get_cors_headers():
    async with asgi_client(Settings(cors_origins=[PAGE])) as client:
        ok = await client.post("/v1/tokens", json=BODY, headers={"Origin": PAGE})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == PAGE
        other = await client.post("/v1/tokens", json=BODY, headers={"Origin": "http://127.0.0.1:40002"})
        assert_problem(other, 403)


async def test_with_real_keys_other_origins_are_cors_business_not_refused():
    key = ("prod", "p" * 32)
    admin = {"Authorization": f"Bearer {livekit_token(*key, room_admin=True)}"}
    async with asgi_client(Settings(api_keys=dict([key]))) as client:
        resp = await client.get("/v1/rooms", headers=admin | {"Origin": PAGE})
        assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers


# -- token lifetime ----------------------------------------------------------------------------

def _token_expiring_in(seconds: float) -> str:
    return (api.AccessToken("devkey", "secret").with_identity("eve")
            .with_grants(api.VideoGrants(room_admin=True)).with_ttl(datetime.timedelta(seconds=seconds)).to_jwt())


def test_a_validly_signed_token_that_lives_too_long_is_refused():
    authority = TokenAuthority({"devkey": "secret"}, max_ttl_s=86400)
    assert authority.verify(_token_expiring_in(86400)).identity == "eve"
    until_2100 = (datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC) - datetime.datetime.now(datetime.UTC))
    with pytest.raises(AuthError) as err:
        authority.verify(_token_expiring_in(until_2100.total_seconds()))
    assert err.value.status == 401 and "longer than" in err.value.reason


async def test_max_token_ttl_holds_over_http_and_for_minting():
    async with asgi_client(Settings(max_token_ttl_s=3600)) as client:
        long_lived = {"Authorization": f"Bearer {_token_expiring_in(7200)}"}
        assert "longer than" in assert_problem(await client.get("/v1/rooms", headers=long_lived), 401)["detail"]
        too_long = await client.post("/v1/tokens", json=BODY | {"ttl_s": 7200})
        assert assert_problem(too_long, 422, "bad_message")["errors"][0]["loc"] == ["body", "ttl_s"]
        assert (await client.post("/v1/tokens", json=BODY | {"ttl_s": 3600})).status_code == 200


# -- API secrets -------------------------------------------------------------------------------

@pytest.mark.parametrize("secret", ["abc", "s" * 31, "é" * 15])
def test_short_api_secrets_are_refused_at_start(secret):
    with pytest.raises(ValidationError, match="shorter than 32 bytes"):
        Settings(api_keys={"k": secret})


def test_short_secrets_only_with_the_test_flag_and_only_on_loopback():
    assert Settings(api_keys={"k": "abc"}, allow_short_secrets=True).keys == {"k": "abc"}
    with pytest.raises(ValidationError, match="shorter than 32 bytes"):
        Settings(api_keys={"k": "abc"}, allow_short_secrets=True, host="0.0.0.0")
    assert Settings(api_keys={"k": "s" * 32}, host="0.0.0.0").keys == {"k": "s" * 32}
    assert Settings().keys == {"devkey": "secret"}  # the dev pair, loopback only, as before
    with pytest.raises(ValidationError, match="dev key pair"):
        Settings(host="0.0.0.0")


async def test_foreign_host_is_refused_by_a_real_server(running_agent):
    async with httpx.AsyncClient(base_url=running_agent.base_url) as http:
        assert_problem(await http.post("/v1/tokens", json=BODY, headers={"Host": "attacker.example"}), 400, "bad_host")
        assert (await http.post("/v1/tokens", json=BODY)).status_code == 200
