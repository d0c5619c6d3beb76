"""Auth and limits as FastAPI dependencies."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agent.auth import AuthError, Principal
from agent.room_names import InvalidRoomName, check_room_name
from agent.runtime import Agent
from agent.settings import is_loopback

from .limits import RateLimiter
from .models import Problem as ProblemOut
from .problems import Problem

bearer = HTTPBearer(auto_error=False, description="A LiveKit-format access token (JWT, HS256)")

# OpenAPI: the refusals every authenticated route can answer
ADMIN_REFUSALS = {
    401: {"model": ProblemOut, "description": "no token, or it is expired, from an unknown issuer or badly signed"},
    403: {"model": ProblemOut, "description": "the token lacks roomAdmin"},
}
ROOM_REFUSALS = {
    401: ADMIN_REFUSALS[401],
    403: {"model": ProblemOut, "description": "the token is for another room or lacks the grant"},
}
RATE_LIMITED = {429: {"model": ProblemOut, "description": "rate limited; Retry-After says when to try again"}}


def get_agent(request: Request) -> Agent:
    return request.app.state.agent


def valid_room(request: Request) -> None:
    """Routes under /v1/rooms/{room}: a name that is not a valid room name is 400, before
    anything else looks at it (it ends up in headers, logs and the Location of a session)."""
    room = request.path_params.get("room")
    if room is None:
        return
    try:
        check_room_name(room)
    except InvalidRoomName as exc:
        raise Problem(400, str(exc), code="bad_room") from None


def check_token_ttl(ttl_s: int, agent: Agent) -> None:
    """A token is minted only for a lifetime this agent will accept back."""
    limit = agent.settings.max_token_ttl_s
    if ttl_s > limit:
        raise Problem(422, f"ttl_s: at most {limit} s (max_token_ttl_s)", code="bad_message",
                      errors=[{"loc": ["body", "ttl_s"], "msg": f"at most {limit}"}])


BAD_ROOM = {400: {"model": ProblemOut, "description": "`bad_room`: not a valid room name"}}


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise Problem(401, "missing bearer token", code="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return credentials.credentials


def _raise(err: AuthError):
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if err.status == 401 else None
    raise Problem(err.status, err.reason, code="unauthorized", headers=headers)


def require_admin(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                  agent: Agent = Depends(get_agent)) -> Principal:
    """roomAdmin; for routes under /v1/rooms/{room}, an admin token limited to that room also opens them."""
    try:
        return agent.tokens.admin(_token(credentials), request.path_params.get("room"))
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
    if agent.settings.dev_mode and credentials is None and is_loopback(client):
        return None
    return require_admin(request, credentials, agent)


def client_key(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    """Who a rate limit counts: the identity and issuer of a valid token (however its text is
    spelled: one more `=` or a fresh token for the same identity is the same bucket), else the
    client address (no token, or one that the route will refuse anyway)."""
    if credentials is not None and credentials.credentials:
        try:
            principal = get_agent(request).tokens.verify(credentials.credentials)
        except AuthError:
            pass
        else:
            return f"identity:{principal.issuer}:{principal.identity}"
    return "ip:" + (request.client.host if request.client else "?")


def rate_limited(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    limiter: RateLimiter = request.app.state.rate_limiter
    # one bucket per door: speak, synthesize or whep (the last segment of the route's path)
    door = request.scope["route"].path.rsplit("/", 1)[-1] if "route" in request.scope else request.url.path
    wait = limiter.hit(f"{door}:{client_key(request, credentials)}")
    if wait:
        raise Problem(429, f"rate limit exceeded on {door}; retry in {wait:.1f} s", code="rate_limited",
                      headers={"Retry-After": RateLimiter.retry_after(wait)})
