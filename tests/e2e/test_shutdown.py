"""Graceful shutdown: `python -m agent serve` gets SIGTERM while a peer listens to an
utterance. It stops taking peers, tells the peer the utterance ended (`interrupted`, reason
`disconnect`), closes the session and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent.auth import TokenAuthority
from agent.client import RoomClient
from agent.settings import DEV_KEY, DEV_SECRET

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LONG = "This utterance is still playing when the agent is told to stop, and it goes on for a while. " * 3
EXIT_GUARD_S = 30  # a hang guard: uvicorn's graceful timeout is 5 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(predicate, timeout: float = 20) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def served():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_AGENT_")}
    env.update(TTS_AGENT_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "agent", "serve", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"

    async def ready() -> None:
        async with httpx.AsyncClient() as http:
            while proc.poll() is None:
                try:
                    if (await http.get(base + "/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)  # polling a child's readiness: there is no event to wait on
        raise RuntimeError(proc.stdout.read())

    await asyncio.wait_for(ready(), 60)
    try:
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def sigterm_while_speaking(proc, base) -> tuple[RoomClient, asyncio.Future, int, str]:
    """A peer listens to a long utterance; SIGTERM; returns (peer, its channel-closed future,
    the exit code, the server's output)."""
    token = TokenAuthority({DEV_KEY: DEV_SECRET}).mint("listener", room="bye")
    c = RoomClient(base, "bye", token)
    await c.connect()
    closed = asyncio.get_running_loop().create_future()
    c.channel.on("close", lambda: closed.done() or closed.set_result(time.perf_counter()))
    c.send({"type": "synthesize", "id": "u", "text": LONG, "voice": "espeak:en-us"})
    await c.wait_event("started", id="u")
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(asyncio.to_thread(proc.wait), EXIT_GUARD_S)
    return c, closed, code, proc.stdout.read()


async def test_sigterm_closes_peer_sessions_and_stops_taking_peers(served):
    proc, base = served
    c, closed, code, output = await sigterm_while_speaking(proc, base)
    try:
        assert "Traceback" not in output, output
        # the session ended for the peer: its data channel and peer connection closed
        await asyncio.wait_for(closed, 10)
        await wait_for(lambda: c.pc.connectionState in ("closed", "failed"), 10)
        assert not c.events_of("finished")
        with pytest.raises(httpx.ConnectError):  # no new peers
            async with httpx.AsyncClient() as http:
                await http.post(base + "/v1/rooms/bye/whep", content="v=0\r\n")
    finally:
        await c.close()


async def test_sigterm_exits_0(served):
    proc, base = served
    c, _, code, output = await sigterm_while_speaking(proc, base)
    await c.close()
    assert code == 0, output


async def test_sigterm_tells_the_peer_its_utterance_was_interrupted(served):
    proc, base = served
    c, closed, _, _ = await sigterm_while_speaking(proc, base)
    try:
        await asyncio.wait_for(closed, 10)
        interrupted = await c.wait_event("interrupted", timeout=1, id="u")  # before the channel closed
        assert interrupted["reason"] == "disconnect"
    finally:
        await c.close()
