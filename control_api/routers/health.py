from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.runtime import Agent

from ..deps import get_agent
from ..problems import problem_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready"}})
async def readyz(agent: Agent = Depends(get_agent)):
    """Ready when the default voice's engine answers and the event loop is not stalled."""
    voice = agent.voices.default_voice
    if voice is None:
        return problem_response(503, "no voice is installed")
    engine = agent.voices.engine_for(voice)
    if not engine.available:
        return problem_response(503, f"engine {engine.name} unavailable: {engine.unavailable_reason}")
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.sleep(0)
    lag_ms = (loop.time() - start) * 1000
    if agent.rooms.draining:
        return problem_response(503, "shutting down")
    return {"status": "ready", "voice": voice.id, "rooms": len(agent.rooms.rooms), "loop_lag_ms": round(lag_ms, 3)}


@router.get("/metrics", include_in_schema=True)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
