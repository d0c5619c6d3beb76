"""Room tokens: LiveKit access tokens minted by this agent."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from agent.runtime import Agent

from ..deps import ADMIN_REFUSALS, admin_or_dev, check_token_ttl, get_agent
from ..models import TokenRequest, TokenResponse

router = APIRouter(tags=["tokens"])


@router.post("/v1/tokens", response_model=TokenResponse, dependencies=[Depends(admin_or_dev)],
             responses=ADMIN_REFUSALS)
def create_token(body: TokenRequest, agent: Agent = Depends(get_agent)) -> TokenResponse:
    """A room token: a LiveKit access token for `room` (HS256, issuer = API key). Needs an admin
    token, except in dev mode (no API keys configured) for clients on loopback."""
    check_token_ttl(body.ttl_s, agent)
    token = agent.tokens.mint(body.identity, room=body.room, name=body.name, ttl_s=body.ttl_s,
                              can_publish_data=body.can_publish_data, can_subscribe=body.can_subscribe)
    url = agent.settings.livekit_url or agent.settings.base_url
    return TokenResponse(token=token, url=url)
