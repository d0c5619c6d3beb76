"""`create_app(agent) -> FastAPI`: the control plane, no globals."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from agent.runtime import Agent
from web_demo import DEMO_DIR

from . import problems
from .livekit_mode import livekit_router
from .limits import BodyGuard, RateLimiter
from .routers import health, rooms, synthesize, tokens, voices, whep
from .web_guard import WebGuard



def create_app(agent: Agent) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await agent.start()
        yield
        await agent.close()

    app = FastAPI(
        title="tts-agent control plane",
        version="1.0.0",
        description="Speaks text into WebRTC rooms. Protocol: shared/PROTOCOL.md (room protocol v1).",
        lifespan=lifespan,
    )
    app.state.agent = agent
    app.state.rate_limiter = RateLimiter(agent.settings.rate_limit_per_min)
    problems.install(app)
    routers = [voices.router, whep.router, synthesize.router, health.router]
    if agent.settings.livekit_url:
        # tokens dispatch the agent; rooms, speak and interrupt go through the LiveKit server
        routers.insert(0, livekit_router(agent.settings, agent.settings.livekit_agent_name))
    else:
        routers[:0] = [tokens.router, rooms.router]
    for router in routers:
        app.include_router(router)
    _mount_demo(app)
    if agent.settings.cors_origins:  # none by default: the demo is same-origin
        app.add_middleware(
            CORSMiddleware,
            allow_origins=agent.settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "PATCH", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "If-Match"],
            expose_headers=["Location", "ETag", "Retry-After", "Content-Disposition"],
        )
    app.add_middleware(BodyGuard, max_bytes=agent.settings.max_body_bytes, timeout_s=agent.settings.body_timeout_s)
    app.add_middleware(WebGuard, settings=agent.settings)  # outermost: a foreign Host or page gets nothing
    return app


def _mount_demo(app: FastAPI) -> None:
    if not DEMO_DIR.is_dir():
        return

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/demo")

    @app.get("/demo", include_in_schema=False)
    def demo():
        return FileResponse(DEMO_DIR / "index.html")

    @app.get("/demo/listen", include_in_schema=False)
    def listen():
        return FileResponse(DEMO_DIR / "listen.html")

    app.mount("/demo/static", StaticFiles(directory=DEMO_DIR), name="demo-static")
