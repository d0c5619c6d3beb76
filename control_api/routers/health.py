"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from agent.runtime import Agent

from ..deps import get_agent
from ..models import Problem as ProblemOut
from ..problems import problem_response

router = APIRouter(tags=["health"])

PROBE_TEXT = "ok"
PROBE_TIMEOUT_S = 30.0  # an engine that gives no audio for PROBE_TEXT in this long is stuck
PROBE_WAIT_S = 2.0  # /readyz answers within this; a probe still running (a cold model loading) is "not yet"
PROBE_CACHE_S = 5.0  # a probe result is reused this long: /readyz polled every second costs ~nothing
TICK_TIMEOUT_S = 0.5  # rooms waiting for frames: the frame clock must tick within this


class Ready(BaseModel):
    status: str
    voice: str
    engine: str
    rooms: int
    loop_lag_ms: float


@dataclass
class EngineProbe:
    """The last answer of the default engine to a tiny synthesis, shared by concurrent requests."""

    checked: float = float("-inf")
    error: str | None = None
    task: asyncio.Task | None = None


async def _probe_engine(agent: Agent) -> str | None:
    """None if the default voice's engine synthesizes PROBE_TEXT in time, else why not."""
    voice = agent.voices.default_voice
    if voice is None:
        return "no voice is installed"
    engine = agent.voices.engine_for(voice)
    if not engine.available:
        return f"engine {engine.name} unavailable: {engine.unavailable_reason}"
    stream = engine.stream(PROBE_TEXT, voice, 1.0)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            async for chunk in stream:
                if len(chunk.pcm):
                    return None
        return f"engine {engine.name} gave no audio for {PROBE_TEXT!r}"
    except TimeoutError:
        return f"engine {engine.name} gave no audio within {PROBE_TIMEOUT_S:.0f} s"
    except Exception as exc:
        return f"engine {engine.name} failed: {exc}"
    finally:
        await stream.aclose()


async def engine_error(request: Request, agent: Agent) -> str | None:
    probe: EngineProbe = getattr(request.app.state, "engine_probe", None) or EngineProbe()
    request.app.state.engine_probe = probe
    if time.monotonic() - probe.checked < PROBE_CACHE_S:
        return probe.error
    if probe.task is None or probe.task.done():
        async def run() -> str | None:
            # recorded by the task itself: a request arriving just after it ends sees the result
            probe.error, probe.checked = await _probe_engine(agent), time.monotonic()
            return probe.error

        probe.task = asyncio.create_task(run(), name="readyz-engine-probe")
    # shielded: neither a client that hangs up nor our wait running out cancels the probe
    try:
        return await asyncio.wait_for(asyncio.shield(probe.task), PROBE_WAIT_S)
    except asyncio.TimeoutError:
        return f"engine {_default_engine_name(agent)} has not answered yet (warming up?)"


def _default_engine_name(agent: Agent) -> str:
    voice = agent.voices.default_voice
    return voice.engine if voice is not None else "?"


async def clock_error(agent: Agent) -> str | None:
    """Rooms that wait for frames need the frame clock to tick; idle rooms need nothing."""
    return await agent.clock_problem(TICK_TIMEOUT_S)


@router.get("/healthz")
def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready,
            responses={503: {"model": ProblemOut, "description": "not ready, and why"}})
async def readyz(request: Request, agent: Agent = Depends(get_agent)):
    """Ready when the default voice's engine synthesizes a tiny text in time (checked at most
    every few seconds) and the rooms' frame clock ticks."""
    if agent.draining:
        return problem_response(503, "shutting down", code="not_ready")
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.sleep(0)
    lag_ms = (loop.time() - start) * 1000
    error = await engine_error(request, agent) or await clock_error(agent)
    if error is not None:
        return problem_response(503, error, code="not_ready", headers={"Retry-After": "5"})
    voice = agent.voices.default_voice
    assert voice is not None  # the engine probe answered
    return Ready(status="ready", voice=voice.id, engine=voice.engine, rooms=len(agent.room_names()),
                 loop_lag_ms=round(lag_ms, 3))


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition"}})
def metrics() -> PlainTextResponse:
    """Prometheus metrics (names in agent/metrics.py)."""
    return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)
