from __future__ import annotations

from fastapi import APIRouter, Depends

from agent.auth import Principal
from agent.runtime import Agent

from ..deps import get_agent, rate_limited, require_admin
from ..models import Accepted, InterruptBody, RoomSummary, SpeakBody
from ..problems import Problem

router = APIRouter(tags=["rooms"], dependencies=[Depends(require_admin)])


def _room(agent: Agent, room: str):
    found = agent.rooms.get(room)
    if found is None:
        raise Problem(404, f"no room {room!r}: a room exists while a peer is in it", code="unknown_room")
    return found


@router.get("/v1/rooms", response_model=list[RoomSummary])
def list_rooms(agent: Agent = Depends(get_agent)) -> list[dict]:
    return [r.snapshot() for r in agent.rooms.rooms.values()]


@router.get("/v1/rooms/{room}", response_model=RoomSummary)
def room_detail(room: str, agent: Agent = Depends(get_agent)) -> dict:
    return _room(agent, room).snapshot()


@router.post("/v1/rooms/{room}/speak", status_code=202, response_model=Accepted, response_model_exclude_none=True,
             dependencies=[Depends(rate_limited)])
def speak(room: str, body: SpeakBody, agent: Agent = Depends(get_agent),
          principal: Principal = Depends(require_admin)) -> Accepted:
    """The `synthesize` message over HTTP: same validation, same events in the room."""
    target = _room(agent, room)
    uid, dropped = agent.speak(target, body.model_dump(exclude_none=True, exclude={"type"}) | _extra(body),
                               f"http:{principal.identity}")
    return Accepted(id=uid, room=room, status="dropped" if dropped else "queued", reason=dropped)


@router.post("/v1/rooms/{room}/interrupt", status_code=202, response_model=Accepted,
             response_model_exclude_none=True)
def interrupt(room: str, body: InterruptBody | None = None, agent: Agent = Depends(get_agent)) -> Accepted:
    target = _room(agent, room)
    data = {} if body is None else body.model_dump(exclude_none=True, exclude={"type"}) | _extra(body)
    agent.interrupt(target, data)
    return Accepted(id=data.get("id") or "*", room=room, status="interrupted")


def _extra(body) -> dict:
    # unknown fields go on to the protocol parser, which rejects them like the data channel does
    return dict(body.model_extra or {})
