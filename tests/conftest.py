"""Shared fixtures: a real agent (uvicorn on a loopback port, real aiortc, real eSpeak NG)."""

from __future__ import annotations

import asyncio
import socket
import warnings
from dataclasses import dataclass

import aioice.ice
import pytest
import uvicorn

from agent.client import RoomClient
from agent.runtime import Agent
from agent.settings import Settings
from control_api import create_app

warnings.filterwarnings("ignore", message=".*HMAC key.*")

# Test clients offer only loopback ICE candidates: media stays on 127.0.0.1.
aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]

_ENGINES = None


def shared_engines():
    """Engines load once per test session (voices take seconds to load)."""
    global _ENGINES
    if _ENGINES is None:
        from engines import default_engines

        _ENGINES = default_engines(Settings())
    return _ENGINES


@dataclass
class RunningAgent:
    agent: Agent
    base_url: str
    server: uvicorn.Server

    def token(self, room: str, identity: str = "tester", **grants) -> str:
        return self.agent.tokens.mint(identity, room=room, **grants)

    def admin_token(self) -> str:
        return self.agent.tokens.mint("admin", admin=True)

    async def client(self, room: str, identity: str = "tester", **kwargs) -> RoomClient:
        c = RoomClient(self.base_url, room, self.token(room, identity), **kwargs)
        await c.connect()
        return c


async def start_agent(settings: Settings | None = None, engines=None) -> RunningAgent:
    # eSpeak NG by default: fast and deterministic; tests that want Piper name its voice
    settings = settings or Settings(voice="espeak:en-us")
    agent = Agent(settings, engines if engines is not None else shared_engines())
    app = create_app(agent)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    server._task = asyncio.create_task(server.serve(sockets=[sock]))  # type: ignore[attr-defined]
    while not server.started:
        if server._task.done():  # type: ignore[attr-defined]
            server._task.result()  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
    return RunningAgent(agent, f"http://127.0.0.1:{port}", server)


async def stop_agent(running: RunningAgent) -> None:
    running.server.should_exit = True
    await running.server._task  # type: ignore[attr-defined]


@pytest.fixture
async def running_agent():
    running = await start_agent()
    try:
        yield running
    finally:
        await stop_agent(running)


@pytest.fixture
async def clients(running_agent):
    """Factory for connected room clients; all closed at teardown."""
    made: list[RoomClient] = []

    async def make(room: str, identity: str = "tester", **kwargs) -> RoomClient:
        c = await running_agent.client(room, identity, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()
