"""Request body caps (413), body-read deadlines (408) and per-client rate limits (429 with Retry-After)."""

from __future__ import annotations

import asyncio
import math
import time

from starlette.exceptions import HTTPException

from .problems import problem_response


class BodyGuard:
    """ASGI middleware for request bodies: at most `max_bytes` (413, declared or streamed), and
    all of it within `timeout_s` of the request (408: a slowloris body holds no connection)."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await problem_response(413, self._too_large())(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        seen = 0
        body_done = False
        started = False

        async def guarded_receive():
            nonlocal seen, body_done
            if body_done:  # after the body only http.disconnect comes: wait as long as it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise _BodyRefused(408, self._too_slow(), {"Connection": "close"}) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyRefused(413, self._too_large())
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except _BodyRefused as refused:
            if not started:
                await problem_response(refused.status_code, refused.detail, headers=refused.headers)(scope, receive, send)

    def _too_large(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"

    def _too_slow(self) -> str:
        return f"request body not received within {self.timeout_s:g} s"


class _BodyRefused(HTTPException):
    """Raised inside the app while it reads the body. An HTTPException, because FastAPI turns
    any other error met while reading a body into a 400."""

    def __init__(self, status: int, detail: str, headers: dict | None = None) -> None:
        super().__init__(status, detail, headers=headers)


class RateLimiter:
    """A token bucket per key (token subject or client IP): `per_min` requests a minute, bursts of `burst`."""

    def __init__(self, per_min: int, burst: int | None = None, clock=time.monotonic):
        self.rate = per_min / 60.0
        self.burst = float(burst if burst is not None else max(1, per_min // 6))
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def hit(self, key: str) -> float:
        """Take one request; returns 0 if allowed, else seconds until one is."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > 100_000:  # bound memory under a spray of keys
                self._buckets.pop(next(iter(self._buckets)))
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    @staticmethod
    def retry_after(wait_s: float) -> str:
        return str(max(1, math.ceil(wait_s)))
