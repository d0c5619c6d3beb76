"""One composition root for `serve`, `worker` and `join`: the same settings path, logging,
GC tuning and default-voice warm-up (the worker used to build its own runtime and skip both)."""

from __future__ import annotations

import gc

import pytest

from agent import runtime
from agent.cli import build_parser
from agent.transports import livekit_cli
from agent.transports.livekit import LiveKitTransport
from tests.conftest import shared_engines

LIVEKIT = ["--url", "ws://127.0.0.1:7880", "--api-key", "key", "--api-secret", "a-secret-of-enough-length"]


@pytest.fixture
def built(monkeypatch) -> list:
    """Every agent the commands build, with the test session's engines (loaded once)."""
    made = []
    build = runtime.build_agent

    def build_with_shared_engines(settings, **kwargs):
        made.append((build(settings, engines=shared_engines(), **kwargs), kwargs))
        return made[-1][0]

    monkeypatch.setattr(runtime, "build_agent", build_with_shared_engines)
    return made


@pytest.mark.parametrize("command", ["worker", "join"])
async def test_worker_and_join_build_their_agent_where_serve_does_and_start_it_the_same_way(command, built,
                                                                                            monkeypatch):
    monkeypatch.setattr(gc, "set_threshold", lambda *a: calls.append(a))
    calls: list = []
    extra = ["--room", "lobby"] if command == "join" else []
    args = build_parser().parse_args([command, *LIVEKIT, "--voice", "espeak:en-us", *extra])
    agent, transport = livekit_cli._runtime(args)
    assert built and built[0][0] is agent and built[0][1] == {"embedded": False}
    assert isinstance(transport, LiveKitTransport) and transport.rooms is agent.rooms
    assert agent.settings.livekit_url == "ws://127.0.0.1:7880" and agent.voices.default_voice.id == "espeak:en-us"
    await agent.start()
    try:
        assert calls, "the GC is tuned at start, as for serve"
    finally:
        await agent.close()


def test_serve_builds_its_agent_through_the_same_root(built, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.setattr("signal.signal", lambda *a: None)  # serve's SIGTERM handler: not in pytest
    args = build_parser().parse_args(["serve", "--voice", "espeak:en-us", "--port", "0"])
    assert args.func(args) == 0
    assert built and built[0][1] == {} and built[0][0].webrtc is not None


async def test_start_warms_the_default_voice_when_its_engine_can(built):
    class Warming:
        name = "warming"
        available = True
        unavailable_reason = None
        warmed: list = []

        def voices(self):
            from engines.base import Voice

            return [Voice("warming:en", "warming", "en", "Warm", 48_000)]

        async def warm(self, voice):
            self.warmed.append(voice.id)

        async def stream(self, *a, **kw):  # never asked to speak here
            yield None

    from agent.settings import Settings

    agent = runtime.Agent(Settings(voice="warming:en"), [Warming()], embedded=False)
    await agent.start()
    await agent._warming
    assert Warming.warmed == ["warming:en"]
    await agent.close()
