"""Rooms over HTTP: list and inspect them, and `speak` / `interrupt` as the data channel would."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Body, Depends

from agent.auth import Principal
from agent.runtime import Agent, UnknownRoom

from ..deps import ADMIN_REFUSALS, BAD_ROOM, get_agent, rate_limited, require_admin, valid_room
from ..models import Accepted, InterruptBody, PauseBody, Problem as ProblemOut, RoomSummary, SpeakBody
from ..problems import Problem

log = logging.getLogger(__name__)
router = APIRouter(tags=["rooms"], dependencies=[Depends(valid_room), Depends(require_admin)],
                   responses=ADMIN_REFUSALS)

# Every route here is `async def`: rooms live on the event loop, and a sync route would run
# in a worker thread, racing the frame clock (and finding no loop to start synthesis on).
_NO_ROOM = BAD_ROOM | {404: {"model": ProblemOut, "description": "no such room (a room exists while a peer is in it)"}}


def _no_room(room: str) -> Problem:
    return Problem(404, f"no room {room!r}: a room exists while a peer is in it", code="unknown_room")


@router.get("/v1/rooms", response_model=list[RoomSummary])
async def list_rooms(agent: Agent = Depends(get_agent)) -> list[dict]:
    """Every open room: its peers, its queue and what it is saying now."""
    return agent.room_snapshots()


@router.get("/v1/rooms/{room}", response_model=RoomSummary, responses=_NO_ROOM)
async def room_detail(room: str, agent: Agent = Depends(get_agent)) -> dict:
    try:
        return agent.room_snapshot(room)
    except UnknownRoom:
        raise _no_room(room) from None


@router.post(
    "/v1/rooms/{room}/speak", status_code=202, response_model=Accepted, response_model_exclude_none=True,
    dependencies=[Depends(rate_limited)],
    responses=_NO_ROOM | {
        409: {"model": ProblemOut, "description": "`duplicate_id`: the id was already used in this room"},
        422: {"model": ProblemOut, "description": "`bad_message`, `text_too_long` or `unknown_voice`"},
        429: {"model": ProblemOut, "description": "rate limited (see Retry-After)"},
    },
)
async def speak(room: str, body: SpeakBody, agent: Agent = Depends(get_agent),
          principal: Principal = Depends(require_admin)) -> Accepted:
    """The `synthesize` message over HTTP: same validation, same events in the room."""
    try:
        uid, dropped = agent.speak(room, body.model_dump(exclude_none=True, exclude={"type"}, by_alias=True),
                                   f"http:{principal.identity}")
    except UnknownRoom:
        raise _no_room(room) from None
    log.info("speak over HTTP", extra={"room": room, "utterance": uid, "identity": principal.identity,
                                       "dropped": dropped})
    return Accepted(id=uid, room=room, status="dropped" if dropped else "queued", reason=dropped)


@router.post(
    "/v1/rooms/{room}/interrupt", status_code=202, response_model=Accepted, response_model_exclude_none=True,
    responses=_NO_ROOM | {422: {"model": ProblemOut, "description": "`bad_message`"}},
)
async def interrupt(room: str, body: InterruptBody | None = Body(None), agent: Agent = Depends(get_agent)) -> Accepted:
    """The `interrupt` message over HTTP: with `id` that utterance (404 `unknown_utterance` if it is
    neither queued nor playing), with `from` every utterance of that sender, without either what
    is playing and the whole queue."""
    data = {} if body is None else body.model_dump(exclude_none=True, exclude={"type"}, by_alias=True)
    try:
        agent.interrupt(room, data)
    except UnknownRoom:
        raise _no_room(room) from None
    log.info("interrupt over HTTP", extra={"room": room, "utterance": data.get("id")})
    return Accepted(id=data.get("id") or "*", room=room, status="interrupted")


@router.post(
    "/v1/rooms/{room}/pause", status_code=202, response_model=Accepted, response_model_exclude_none=True,
    responses=_NO_ROOM | {422: {"model": ProblemOut, "description": "`bad_message`"}},
)
async def pause(room: str, body: PauseBody | None = Body(None), agent: Agent = Depends(get_agent)) -> Accepted:
    """The `pause` message over HTTP: hold the room at the next sentence boundary (`now`: at once,
    with the fade); the queue is kept and lines sent meanwhile queue as usual."""
    data = {} if body is None else body.model_dump(exclude_none=True, exclude={"type"})
    try:
        agent.pause(room, data)
    except UnknownRoom:
        raise _no_room(room) from None
    log.info("pause over HTTP", extra={"room": room})
    return Accepted(id="*", room=room, status="paused")


@router.post("/v1/rooms/{room}/resume", status_code=202, response_model=Accepted, response_model_exclude_none=True,
             responses=_NO_ROOM)
async def resume(room: str, agent: Agent = Depends(get_agent)) -> Accepted:
    """The `resume` message over HTTP: the paused utterance's remainder first, then the queue."""
    try:
        agent.resume(room)
    except UnknownRoom:
        raise _no_room(room) from None
    log.info("resume over HTTP", extra={"room": room})
    return Accepted(id="*", room=room, status="resumed")
