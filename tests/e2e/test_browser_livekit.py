"""The web demo in LiveKit mode: a real agent started with `livekit_url` (its /v1/tokens answers
with that ws:// URL) and headless Chromium. No LiveKit server can run here and there is no
internet, so what is tested is what the page does up to the server: it imports livekit-client
from the configured URL (`?lk=`), says clearly when that fails, and with the real package (npm,
unpacked into a temporary directory, never committed) knocks on the server with its token.
Embedded mode must load nothing from the network: checked on every request the page makes."""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import subprocess
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import Page

from agent.settings import Settings
from tests.conftest import start_agent, stop_agent
from tests.e2e.test_browser import WAIT_MS, join_demo, open_page, page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e

LIVEKIT_JS = Path(__file__).resolve().parents[2] / "web_demo" / "livekit.js"
LIVEKIT_VERSION = re.search(r'LIVEKIT_CLIENT_VERSION = "([^"]+)"', LIVEKIT_JS.read_text()).group(1)
DEFAULT_MODULE_URL = f"https://cdn.jsdelivr.net/npm/livekit-client@{LIVEKIT_VERSION}/dist/livekit-client.esm.mjs"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def livekit_mode_agent(livekit_url: str):
    return await start_agent(Settings(voice="espeak:en-us", livekit_url=livekit_url))


class RequestLog:
    """Every request the page makes, and those that failed, by URL."""

    def __init__(self, page: Page):
        self.made: list[str] = []
        self.failed: list[str] = []
        self.ok: list[str] = []
        page.on("request", lambda r: self.made.append(r.url))
        page.on("requestfailed", lambda r: self.failed.append(r.url))
        page.on("response", lambda r: r.ok and self.ok.append(r.url))


async def join_and_fail(page: Page, url: str) -> dict:
    await page.goto(url)
    await page.click("#join")
    await page.wait_for_function("window.demo.state === 'error'", timeout=WAIT_MS)
    return await page.evaluate("({transport: window.demo.transport, error: window.demo.error})")


async def assert_nothing_joined(page: Page, agent, log: RequestLog) -> None:
    # the embedded path was not taken: no WHEP offer, no session, and the page can try again
    assert not [u for u in log.made if u.endswith("/whep")]
    assert agent.agent.webrtc.sessions == {}
    assert await page.is_visible("#join") and await page.is_disabled("#speak")


async def test_livekit_mode_says_clearly_when_livekit_client_cannot_be_loaded(page):
    agent = await livekit_mode_agent(f"ws://127.0.0.1:{closed_port()}")
    try:
        log = RequestLog(page)
        module_url = f"http://127.0.0.1:{closed_port()}/livekit-client.esm.mjs"
        state = await join_and_fail(page, f"{agent.base_url}/demo?room=lk-room&lk={module_url}")

        assert state["transport"] == "livekit"
        assert state["error"]["code"] == "livekit_module"
        assert module_url in state["error"]["message"] and "?lk=" in state["error"]["message"]
        assert module_url in log.failed, "the page did not try the ?lk= URL"
        assert "livekit-client could not be loaded" in await page.inner_text("#status")
        assert await page.locator("#log li.bad", has_text=module_url).count() == 1
        await assert_nothing_joined(page, agent, log)
    finally:
        await stop_agent(agent)


async def test_livekit_mode_tries_the_pinned_cdn_build_by_default(page):
    agent = await livekit_mode_agent(f"ws://127.0.0.1:{closed_port()}")
    try:
        # no internet here, and tests stay on loopback: the CDN request is refused inside Chromium
        tried: list[str] = []

        async def refuse(route):
            tried.append(route.request.url)
            await route.abort("internetdisconnected")

        await page.route("https://cdn.jsdelivr.net/**", refuse)
        state = await join_and_fail(page, f"{agent.base_url}/demo?room=lk-room")
        assert tried == [DEFAULT_MODULE_URL]
        assert state["error"]["code"] == "livekit_module" and DEFAULT_MODULE_URL in state["error"]["message"]
    finally:
        await stop_agent(agent)


async def test_listen_page_in_livekit_mode_says_why_it_cannot_connect(page):
    agent = await livekit_mode_agent(f"ws://127.0.0.1:{closed_port()}")
    try:
        module_url = f"http://127.0.0.1:{closed_port()}/livekit-client.esm.mjs"
        await page.goto(f"{agent.base_url}/demo/listen?room=lk-listen&lk={module_url}")
        await page.wait_for_function("window.listen.error !== null", timeout=WAIT_MS)
        listen = await page.evaluate("({transport: window.listen.transport, error: window.listen.error})")
        assert listen["transport"] == "livekit" and listen["error"]["code"] == "livekit_module"
        assert module_url in await page.get_attribute("#status", "title")
        assert agent.agent.webrtc.sessions == {}
    finally:
        await stop_agent(agent)


async def test_embedded_mode_loads_nothing_from_the_network(running_agent, page):
    log = RequestLog(page)
    await join_demo(page, running_agent.base_url, "embedded-offline")
    assert await page.evaluate("window.demo.transport") == "whep"
    off_agent = [u for u in log.made if not u.startswith(running_agent.base_url + "/")]
    assert off_agent == [], f"embedded mode fetched from elsewhere: {off_agent}"
    assert not [u for u in log.made if "livekit-client" in u]


# -- with the real livekit-client ----------------------------------------------------------------


@pytest.fixture(scope="module")
def livekit_client_dist(tmp_path_factory) -> Path:
    """livekit-client's dist/ at the version the page pins, from npm (npm's cache when it has it)."""
    where = tmp_path_factory.mktemp("livekit-client")
    try:
        packed = subprocess.run(["npm", "pack", f"livekit-client@{LIVEKIT_VERSION}", "--prefer-offline",
                                 "--pack-destination", str(where)],
                                capture_output=True, text=True, timeout=180, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"npm cannot fetch livekit-client@{LIVEKIT_VERSION} here: {exc}")
    with tarfile.open(where / packed.stdout.strip().splitlines()[-1]) as tgz:
        tgz.extractall(where, filter="data")
    return where / "package" / "dist"


class CorsFiles(SimpleHTTPRequestHandler):
    """A self-hosted copy: the page imports it across origins, so it needs CORS and a JS type."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript"}

    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def module_server(livekit_client_dist):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CorsFiles, directory=str(livekit_client_dist)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class SignalDoor:
    """Stands in for the LiveKit server, which cannot run here: records the request line of each
    connection to it (livekit-client's signal WebSocket, its validate call) and answers 503."""

    def __init__(self):
        self.requests: list[str] = []
        self.knocked = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode(errors="replace")
        self.requests.append(line)
        self.knocked.set()
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


async def test_livekit_mode_joins_with_the_real_livekit_client(page, module_server):
    door = SignalDoor()
    server = await asyncio.start_server(door.serve, "127.0.0.1", 0)
    livekit_url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    agent = await livekit_mode_agent(livekit_url)
    try:
        log = RequestLog(page)
        module_url = f"{module_server}/livekit-client.esm.mjs"
        state = await join_and_fail(page, f"{agent.base_url}/demo?room=lk-real&identity=web-lk&lk={module_url}")

        assert module_url in log.ok, "the page did not load the self-hosted livekit-client"
        assert state["transport"] == "livekit"
        assert state["error"]["code"] == "livekit_connect", state["error"]
        assert livekit_url in state["error"]["message"]
        assert "could not join the LiveKit room" in await page.inner_text("#status")

        # livekit-client knocked on the server's /rtc door with the token /v1/tokens gave the page
        await asyncio.wait_for(door.knocked.wait(), WAIT_MS / 1000)
        signal = [r for r in door.requests if r.startswith("GET /rtc")]
        assert signal, door.requests
        query = parse_qs(urlsplit(signal[0].split()[1]).query)
        principal = agent.agent.tokens.verify(query["access_token"][0])
        assert (principal.room, principal.identity, principal.room_join) == ("lk-real", "web-lk", True)
        await assert_nothing_joined(page, agent, log)
    finally:
        await stop_agent(agent)
        server.close()
        await server.wait_closed()
