"""Auth and limits as FastAPI dependencies."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agent.auth import AuthError, Principal
from agent.runtime import Agent
from agent.settings import is_loopback

from .limits import RateLimiter
from .problems import Problem

bearer = HTTPBearer(auto_error=False, description="A LiveKit-format access token (JWT, HS256)")


def get_agent(request: Request) -> Agent:
    return request.app.state.agent


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise Problem(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return credentials.credentials


def _raise(err: AuthError):
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if err.status == 401 else None
    raise Problem(err.status, err.reason, headers=headers)


def require_admin(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                  agent: Agent = Depends(get_agent)) -> Principal:
    try:
        return agent.tokens.admin(_token(credentials))
    except AuthError as err:
        _raise(err)


def room_principal(room: str, credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                   agent: Agent = Depends(get_agent)) -> Principal:
    try:
        return agent.tokens.for_room(_token(credentials), room)
    except AuthError as err:
        _raise(err)


def admin_or_dev(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                 agent: Agent = Depends(get_agent)) -> Principal | None:
    """Token minting is open in dev mode to loopback clients, admin-only otherwise."""
    client = request.client.host if request.client else ""
    if agent.settings.dev_mode and credentials is None and is_loopback(client or "127.0.0.1"):
        return None
    return require_admin(credentials, agent)


def rate_limited(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    limiter: RateLimiter = request.app.state.rate_limiter
    key = credentials.credentials[-32:] if credentials else (request.client.host if request.client else "?")
    wait = limiter.hit(f"{request.url.path.rsplit('/', 1)[-1]}:{key}")
    if wait:
        raise Problem(429, "rate limit exceeded", code="rate_limited",
                      headers={"Retry-After": RateLimiter.retry_after(wait)})
