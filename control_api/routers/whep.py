"""WHEP (RFC 9725): an SDP offer in, `201 Created` with the answer and a session Location out."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request, Response

from agent.auth import Principal
from agent.room_names import room_path
from agent.rooms import RoomLimit
from agent.runtime import Agent
from agent.transports.webrtc import OfferError

from ..deps import BAD_ROOM, RATE_LIMITED, ROOM_REFUSALS, get_agent, rate_limited, room_principal, valid_room
from ..models import Problem as ProblemOut
from ..problems import Problem

log = logging.getLogger(__name__)
router = APIRouter(tags=["whep"], dependencies=[Depends(valid_room)], responses=ROOM_REFUSALS | BAD_ROOM)
SDP = "application/sdp"


@router.options("/v1/rooms/{room}/whep", include_in_schema=False)
def whep_options() -> Response:
    return Response(status_code=204, headers={"Accept-Post": SDP})


@router.post(
    "/v1/rooms/{room}/whep",
    status_code=201,
    dependencies=[Depends(rate_limited)],
    responses={
        201: {"content": {SDP: {"schema": {"type": "string"}}}, "description": "SDP answer; Location names the session"},
        400: {"model": ProblemOut, "description": "`bad_offer`: not an SDP offer this agent can answer; "
                                                  "`bad_room`: not a valid room name"},
        415: {"model": ProblemOut, "description": "the body is not application/sdp"},
        429: {"model": ProblemOut, "description": "`rate_limited`, or `too_many_sessions`: this identity "
                                                  "already holds its share of the room's peers"},
        503: {"model": ProblemOut, "description": "`capacity`: too many peers in the room or rooms in the agent"},
    } | RATE_LIMITED,
    openapi_extra={"requestBody": {"required": True, "content": {SDP: {"schema": {"type": "string"}}}}},
)
async def whep_offer(room: str, request: Request, agent: Agent = Depends(get_agent),
                     principal: Principal = Depends(room_principal)) -> Response:
    if not principal.can_subscribe and not principal.room_admin:
        raise Problem(403, "the token does not grant canSubscribe", code="unauthorized")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype != SDP:
        raise Problem(415, f"the offer must be {SDP}, not {ctype}")
    try:
        offer = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, "the offer is not UTF-8 text") from None
    _check_share(agent, room, principal.identity)
    try:
        session = await agent.webrtc.answer(room, offer, principal.identity,
                                            can_publish=principal.can_publish_data or principal.room_admin)
    except OfferError as exc:
        raise Problem(400, str(exc), code="bad_offer") from None
    except RoomLimit as exc:
        log.warning("WHEP refused: %s", exc, extra={"room": room, "identity": principal.identity})
        raise Problem(503, str(exc), code="capacity", headers={"Retry-After": "5"}) from None
    log.info("peer joined", extra={"room": room, "peer": session.peer_id, "identity": principal.identity,
                                   "can_publish": session.can_publish})
    # percent-encoded: a room named in any script gives a header that is ASCII and resolves
    location = f"/v1/rooms/{room_path(room)}/whep/{session.id}"
    return Response(session.pc.localDescription.sdp, status_code=201, media_type=SDP,
                    headers={"Location": location, "ETag": f'"{session.id}"'})


def _check_share(agent: Agent, room: str, identity: str) -> None:
    """One token (one identity) may not take all of a room's peer slots. Checked right before
    `answer`, which adds the peer before its first await: no second offer slips in between."""
    limit = agent.settings.max_peers_per_identity
    held = sum(1 for s in agent.webrtc.sessions.values() if s.room.name == room and s.identity == identity)
    if held >= limit:
        log.warning("WHEP refused: identity over its share", extra={"room": room, "identity": identity})
        raise Problem(429, f"{identity!r} already has {held} sessions in this room, the most allowed "
                      "(max_peers_per_identity)", code="too_many_sessions", headers={"Retry-After": "5"})


@router.delete("/v1/rooms/{room}/whep/{session_id}", status_code=200,
               responses={404: {"model": ProblemOut, "description": "no such session in this room"}})
async def whep_delete(room: str, session_id: str, agent: Agent = Depends(get_agent),
                      principal: Principal = Depends(room_principal)) -> Response:
    """End a WHEP session (its `Location`), with the token that opened it or an admin token."""
    session = agent.webrtc.sessions.get(session_id)
    if session is None or session.room.name != room:
        raise Problem(404, "no such WHEP session")
    if session.identity != principal.identity and not principal.room_admin:
        raise Problem(403, "this session belongs to another identity", code="unauthorized")
    await agent.webrtc.end(session_id)
    log.info("peer left", extra={"room": room, "peer": session.peer_id, "identity": session.identity})
    return Response(status_code=200)


@router.patch("/v1/rooms/{room}/whep/{session_id}", include_in_schema=False)
def whep_patch() -> Response:
    # The agent gathers all candidates before answering: no trickle ICE to accept.
    raise Problem(405, "trickle ICE is not supported; send a complete offer", headers={"Allow": "DELETE"})
