"""A web page on another origin cannot drive a dev-mode agent. Real headless Chromium: the
"evil" page is served by a second HTTP server on another loopback port (another origin, the
same site), the agent in dev mode on its own port; a victim peer (real aiortc) sits in a room."""

from __future__ import annotations

import functools
import json
import logging
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.test_browser import open_page  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

# Every call an attacking page would make; each returns what the page could see.
ATTACK = """
async ([base, token]) => {
  const auth = {Authorization: `Bearer ${token}`};
  const json = {"Content-Type": "application/json"};
  const calls = {
    mint: [`${base}/v1/tokens`, {method: "POST", headers: json, body: JSON.stringify({room: "victim", identity: "evil"})}],
    rooms: [`${base}/v1/rooms`, {headers: auth}],
    detail: [`${base}/v1/rooms/victim`, {headers: auth}],
    speak: [`${base}/v1/rooms/victim/speak`, {method: "POST", headers: {...auth, ...json},
            body: JSON.stringify({text: "Hello from an evil web page", priority: "critical"})}],
    interrupt: [`${base}/v1/rooms/victim/interrupt`, {method: "POST", headers: auth}],
    whep: [`${base}/v1/rooms/victim/whep`, {method: "POST", headers: {...auth, "Content-Type": "application/sdp"},
           body: "v=0\\r\\n"}],
    synthesize: [`${base}/v1/synthesize`, {method: "POST", headers: {...auth, ...json}, body: JSON.stringify({text: "hi"})}],
  };
  const out = {};
  for (const [name, [url, init]] of Object.entries(calls)) {
    try {
      const resp = await fetch(url, init);
      out[name] = {status: resp.status, body: await resp.text()};
    } catch (err) {
      out[name] = {error: String(err)};
    }
  }
  // a "simple" request needs no preflight: it reaches the server, the page cannot read it
  const blind = await fetch(`${base}/v1/tokens`, {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body: JSON.stringify({room: "victim", identity: "evil"})});
  out.blind = {type: blind.type};
  return out;
}
"""


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def evil_origin(tmp_path):
    (tmp_path / "evil.html").write_text("<!doctype html><title>evil</title><p>nothing to see")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_a_page_of_another_origin_cannot_mint_or_call_anything(running_agent, clients, open_page,
                                                                     evil_origin, caplog):
    victim = await clients("victim", "victim")
    # the dev secret is public: the page can sign its own admin token; hand it one
    dev_admin = running_agent.admin_token()
    page = await open_page()
    await page.goto(f"{evil_origin}/evil.html")
    with caplog.at_level(logging.WARNING, logger="control_api.web_guard"):
        seen = await page.evaluate(ATTACK, [running_agent.base_url, dev_admin])
    for name in ("mint", "rooms", "detail", "speak", "interrupt", "whep", "synthesize"):
        assert "error" in seen[name], f"{name}: the page read {json.dumps(seen[name])[:200]}"
    assert seen["blind"]["type"] == "opaque"
    refused = [r for r in caplog.records if r.name == "control_api.web_guard"]
    assert refused and all(r.origin == evil_origin for r in refused)
    # the blind POST and every preflight reached the agent and were refused there
    assert {r.path for r in refused} >= {"/v1/tokens", "/v1/rooms/victim/speak", "/v1/rooms/victim/whep"}
    # nothing happened in the room: the data channel is ordered, so after the pong nothing is pending
    victim.send({"type": "ping", "t": 1})
    await victim.wait_event("pong", t=1)
    assert victim.events_of("queued") == [] and victim.events_of("interrupted") == []
    assert list(running_agent.agent.rooms.rooms) == ["victim"]
    assert [p["identity"] for p in running_agent.agent.rooms.get("victim").peers.values()] == ["victim"]

    # control: the agent's own page (same origin) does mint a token in the same browser
    own = await open_page()
    await own.goto(f"{running_agent.base_url}/demo")
    status = await own.evaluate("""async () => (await fetch("/v1/tokens", {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify({room: "mine", identity: "me"})})).status""")
    assert status == 200
