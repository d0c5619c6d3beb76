"""WHEP (RFC 9725): an SDP offer in, `201 Created` with the answer and a session Location out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from agent.auth import Principal
from agent.rooms import RoomLimit
from agent.runtime import Agent
from agent.transports.webrtc import OfferError

from ..deps import get_agent, rate_limited, room_principal
from ..problems import Problem

router = APIRouter(tags=["whep"])
SDP = "application/sdp"


@router.options("/v1/rooms/{room}/whep", include_in_schema=False)
def whep_options() -> Response:
    return Response(status_code=204, headers={"Accept-Post": SDP})


@router.post(
    "/v1/rooms/{room}/whep",
    status_code=201,
    dependencies=[Depends(rate_limited)],
    responses={201: {"content": {SDP: {}}, "description": "SDP answer; Location names the session"}},
    openapi_extra={"requestBody": {"required": True, "content": {SDP: {"schema": {"type": "string"}}}}},
)
async def whep_offer(room: str, request: Request, agent: Agent = Depends(get_agent),
                     principal: Principal = Depends(room_principal)) -> Response:
    if not principal.can_subscribe and not principal.room_admin:
        raise Problem(403, "the token does not grant canSubscribe")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype != SDP:
        raise Problem(415, f"the offer must be {SDP}, not {ctype}")
    try:
        offer = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, "the offer is not UTF-8 text") from None
    try:
        session = await agent.webrtc.answer(room, offer, principal.identity,
                                            can_publish=principal.can_publish_data or principal.room_admin)
    except OfferError as exc:
        raise Problem(400, str(exc), code="bad_offer") from None
    except RoomLimit as exc:
        raise Problem(503, str(exc), code="capacity", headers={"Retry-After": "5"}) from None
    location = f"/v1/rooms/{room}/whep/{session.id}"
    return Response(session.pc.localDescription.sdp, status_code=201, media_type=SDP,
                    headers={"Location": location, "ETag": f'"{session.id}"'})


@router.delete("/v1/rooms/{room}/whep/{session_id}", status_code=200)
async def whep_delete(room: str, session_id: str, agent: Agent = Depends(get_agent),
                      principal: Principal = Depends(room_principal)) -> Response:
    session = agent.webrtc.sessions.get(session_id)
    if session is None or session.room.name != room:
        raise Problem(404, "no such WHEP session")
    await agent.webrtc.end(session_id)
    return Response(status_code=200)


@router.patch("/v1/rooms/{room}/whep/{session_id}", include_in_schema=False)
def whep_patch() -> Response:
    # The agent gathers all candidates before answering: no trickle ICE to accept.
    raise Problem(405, "trickle ICE is not supported; send a complete offer", headers={"Allow": "DELETE"})
