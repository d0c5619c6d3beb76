"""Who may talk to the control plane from a web browser.

Two checks in front of every route, as ASGI middleware:

- `Host` must name this agent (DNS rebinding: a page on `attacker.example` whose name now
  resolves to 127.0.0.1 sends `Host: attacker.example`). Allowed: the listen address, the
  loopback names when it listens on loopback, the host of `public_url`, and `allowed_hosts`.
  On a wildcard address (0.0.0.0, ::) any Host is accepted unless `allowed_hosts` is set:
  real keys are required there, so a rebound page holds no token.
- In dev mode (the public dev key pair), a browser on another origin is refused: its
  `Origin` is not this agent's own, or `Sec-Fetch-Site` says `same-site` / `cross-site`
  (another port of 127.0.0.1 is `same-site`). Top-level navigations stay allowed, so a link
  to `/demo` works. Origins listed in `cors_origins` are allowed (and get CORS headers).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from agent.settings import Settings, is_loopback

from .problems import problem_response

log = logging.getLogger(__name__)

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_WILDCARDS = {"0.0.0.0", "::", ""}


def allowed_hosts(settings: Settings) -> set[str] | None:
    """Host names (no port) this agent answers to; None: any."""
    extra = {h.lower().strip("[]") for h in settings.allowed_hosts}
    if "*" in extra:
        return None
    if settings.host in _WILDCARDS and not extra:
        return None
    hosts = {settings.host.lower().strip("[]")} | extra
    if is_loopback(settings.host) or settings.host in _WILDCARDS:
        hosts |= _LOOPBACK_NAMES
    if settings.public_url:
        public = urlsplit(settings.public_url).hostname
        if public:
            hosts.add(public.lower())
    return hosts


def host_name(value: str) -> str:
    """The host part of a Host header: `127.0.0.1:8080` -> `127.0.0.1`, `[::1]:80` -> `::1`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value  # no port, or a bare IPv6 address


class WebGuard:
    def __init__(self, app, settings: Settings):
        self.app = app
        self.hosts = allowed_hosts(settings)
        self.dev_mode = settings.dev_mode
        self.cors_origins = {o.rstrip("/").lower() for o in settings.cors_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k: v for k, v in scope["headers"] if k in (b"host", b"origin", b"sec-fetch-site",
                                                              b"sec-fetch-mode")}
        host = headers.get(b"host", b"").decode("latin-1")
        if self.hosts is not None and host and host_name(host) not in self.hosts:
            log.warning("refused a request for another host", extra={"host": host, "path": scope["path"]})
            return await problem_response(
                400, f"this agent does not answer to Host {host!r} (see the allowed_hosts setting)",
                code="bad_host")(scope, receive, send)
        if self.dev_mode:
            origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/").lower()
            site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
            navigation = headers.get(b"sec-fetch-mode", b"") == b"navigate" and scope["method"] in ("GET", "HEAD")
            if self._foreign(scope, host, origin, site) and not navigation:
                log.warning("refused a browser request from another origin",
                            extra={"origin": origin or site, "path": scope["path"]})
                return await problem_response(
                    403, "in dev mode the agent takes no requests from pages of other origins "
                    "(configure API keys, and cors_origins for a web app)", code="unauthorized",
                )(scope, receive, send)
        return await self.app(scope, receive, send)

    def _foreign(self, scope, host: str, origin: str, site: str) -> bool:
        if origin and origin in self.cors_origins:
            return False
        if origin:
            scheme = scope.get("scheme", "http")
            return origin != f"{scheme}://{host}".lower()
        return site in ("same-site", "cross-site")
