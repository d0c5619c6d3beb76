"""The control plane in LiveKit mode (`--livekit-url`): LiveKit carries the rooms.

Tokens carry a room configuration that dispatches the agent when a user joins; HTTP
`speak` / `interrupt` reach the worker in the room through RoomService `send_data` on
topic `tts`; rooms are listed from LiveKit; `POST /v1/rooms/{room}/agent` dispatches the
agent explicitly. All of it through `livekit-api`, signed with the configured key pair.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import aiohttp
from fastapi import APIRouter, Depends
from livekit import api
from pydantic import BaseModel, ConfigDict, Field

from agent.auth import Principal
from agent.protocol import ErrorCode, ProtocolError, Synthesize, parse_command
from agent.runtime import Agent
from agent.settings import Settings
from engines.registry import UnknownVoice

from .deps import BAD_ROOM, admin_or_dev, check_token_ttl, get_agent, rate_limited, require_admin, valid_room
from .models import Accepted, InterruptBody, PauseBody, SpeakBody, TokenRequest, TokenResponse
from .problems import Problem

TOPIC = "tts"
DEFAULT_AGENT_NAME = "tts-agent"


class LiveKitRoomOut(BaseModel):
    room: str
    sid: str
    num_participants: int
    num_publishers: int
    created: int
    metadata: str = ""
    participants: list[dict] | None = None


class DispatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: str = Field("", max_length=64 * 1024, description="handed to the agent with the job")


class DispatchOut(BaseModel):
    dispatch_id: str
    room: str
    agent_name: str


def room_configuration(agent_name: str, metadata: str = "") -> api.RoomConfiguration:
    """What a token carries so that LiveKit dispatches the agent when its holder joins."""
    return api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=agent_name, metadata=metadata)])


def dispatch_request(room: str, agent_name: str, metadata: str = "") -> api.CreateAgentDispatchRequest:
    return api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=metadata)


def send_data_request(room: str, message: dict) -> api.SendDataRequest:
    """One protocol message for the worker in `room`: reliable, topic `tts`, to everyone
    (the agent takes it; clients ignore messages that are not events)."""
    payload = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    return api.SendDataRequest(room=room, data=payload, kind=api.DataPacket.Kind.RELIABLE, topic=TOPIC)


class LiveKitServer:
    """One `livekit-api` client per call: the control plane's calls are few, and a client
    bound to no event loop keeps the app factory free of lifecycle hooks."""

    def __init__(self, url: str, key: str, secret: str):
        self.url, self.key, self.secret = url, key, secret

    def client(self) -> api.LiveKitAPI:
        return api.LiveKitAPI(self.url, self.key, self.secret)

    async def call(self, fn) -> Any:
        try:
            async with self.client() as lk:
                return await fn(lk)
        except api.TwirpError as err:
            if err.status == 404:
                raise Problem(404, f"LiveKit: {err.message}", code="unknown_room") from None
            if err.status in (401, 403):
                raise Problem(502, f"LiveKit refused this control plane's key: {err.message}") from None
            raise Problem(502, f"LiveKit answered {err.status}: {err.message}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Problem(503, f"LiveKit at {self.url} is unreachable: {exc}", headers={"Retry-After": "5"}) from None


def livekit_router(settings: Settings, agent_name: str = DEFAULT_AGENT_NAME) -> APIRouter:
    assert settings.livekit_url, "LiveKit mode needs settings.livekit_url"
    key = next(iter(settings.keys))
    server = LiveKitServer(settings.livekit_url, key, settings.keys[key])
    router = APIRouter(tags=["livekit"], dependencies=[Depends(valid_room)], responses=BAD_ROOM)

    @router.post("/v1/tokens", response_model=TokenResponse, dependencies=[Depends(admin_or_dev)])
    def create_token(body: TokenRequest, agent: Agent = Depends(get_agent)) -> TokenResponse:
        """A LiveKit access token for `room`; joining with it dispatches the agent."""
        check_token_ttl(body.ttl_s, agent)
        token = agent.tokens.mint(body.identity, room=body.room, name=body.name, ttl_s=body.ttl_s,
                                  can_publish_data=body.can_publish_data, can_subscribe=body.can_subscribe,
                                  room_config=room_configuration(agent_name))
        return TokenResponse(token=token, url=settings.livekit_url)

    @router.get("/v1/rooms", response_model=list[LiveKitRoomOut], dependencies=[Depends(require_admin)])
    async def list_rooms() -> list[LiveKitRoomOut]:
        found = await server.call(lambda lk: lk.room.list_rooms(api.ListRoomsRequest()))
        return [_room_out(r) for r in found.rooms]

    async def existing_room(room: str):
        """The LiveKit room `room`, or 404. Asked before `send_data`: livekit-server answers
        `send_data` to a missing room only after its internal retries, with 503 (psrpc: no
        response from servers), not 404."""
        found = await server.call(lambda lk: lk.room.list_rooms(api.ListRoomsRequest(names=[room])))
        if not found.rooms:
            raise Problem(404, f"no LiveKit room {room!r}", code="unknown_room")
        return found.rooms[0]

    @router.get("/v1/rooms/{room}", response_model=LiveKitRoomOut, dependencies=[Depends(require_admin)])
    async def room_detail(room: str) -> LiveKitRoomOut:
        found = await existing_room(room)
        people = await server.call(lambda lk: lk.room.list_participants(api.ListParticipantsRequest(room=room)))
        out = _room_out(found)
        out.participants = [{"identity": p.identity, "name": p.name, "kind": api.ParticipantInfo.Kind.Name(p.kind)}
                            for p in people.participants]
        return out

    @router.post("/v1/rooms/{room}/speak", status_code=202, response_model=Accepted,
                 response_model_exclude_none=True, dependencies=[Depends(rate_limited)])
    async def speak(room: str, body: SpeakBody, agent: Agent = Depends(get_agent),
                    principal: Principal = Depends(require_admin)) -> Accepted:
        """The `synthesize` message, checked here (the worker's answer cannot come back over
        HTTP), then sent into the room for the agent."""
        message = body.model_dump(exclude_none=True, exclude={"type"}) | dict(body.model_extra or {})
        message = {"type": "synthesize", "id": f"h{secrets.token_hex(6)}", **message}
        cmd = parse_command(message, max_text_chars=settings.max_text_chars)
        assert isinstance(cmd, Synthesize)
        if cmd.voice:
            try:
                agent.voices.resolve(cmd.voice)
            except UnknownVoice as exc:
                raise ProtocolError(ErrorCode.unknown_voice, str(exc), cmd.id) from None
        message.setdefault("from", f"http:{principal.identity}")
        await existing_room(room)
        await server.call(lambda lk: lk.room.send_data(send_data_request(room, message)))
        return Accepted(id=cmd.id or "", room=room, status="queued")

    @router.post("/v1/rooms/{room}/interrupt", status_code=202, response_model=Accepted,
                 response_model_exclude_none=True, dependencies=[Depends(require_admin)])
    async def interrupt(room: str, body: InterruptBody | None = None) -> Accepted:
        data = {} if body is None else (body.model_dump(exclude_none=True, exclude={"type"}, by_alias=True)
                                        | dict(body.model_extra or {}))
        message = {"type": "interrupt", **data}
        parse_command(message, max_text_chars=settings.max_text_chars)
        await existing_room(room)
        await server.call(lambda lk: lk.room.send_data(send_data_request(room, message)))
        return Accepted(id=data.get("id") or "*", room=room, status="interrupted")

    @router.post("/v1/rooms/{room}/pause", status_code=202, response_model=Accepted,
                 response_model_exclude_none=True, dependencies=[Depends(require_admin)])
    async def pause(room: str, body: PauseBody | None = None) -> Accepted:
        message = {"type": "pause"} if body is None else body.model_dump(exclude_none=True)
        parse_command(message, max_text_chars=settings.max_text_chars)
        await existing_room(room)
        await server.call(lambda lk: lk.room.send_data(send_data_request(room, message)))
        return Accepted(id="*", room=room, status="paused")

    @router.post("/v1/rooms/{room}/resume", status_code=202, response_model=Accepted,
                 response_model_exclude_none=True, dependencies=[Depends(require_admin)])
    async def resume(room: str) -> Accepted:
        message = {"type": "resume"}
        await existing_room(room)
        await server.call(lambda lk: lk.room.send_data(send_data_request(room, message)))
        return Accepted(id="*", room=room, status="resumed")

    @router.post("/v1/rooms/{room}/agent", status_code=201, response_model=DispatchOut,
                 dependencies=[Depends(require_admin)])
    async def dispatch(room: str, body: DispatchBody | None = None) -> DispatchOut:
        """Send the agent into `room` now (LiveKit's explicit agent dispatch)."""
        req = dispatch_request(room, agent_name, body.metadata if body else "")
        made = await server.call(lambda lk: lk.agent_dispatch.create_dispatch(req))
        return DispatchOut(dispatch_id=made.id, room=made.room or room, agent_name=made.agent_name or agent_name)

    return router


def _room_out(r) -> LiveKitRoomOut:
    return LiveKitRoomOut(room=r.name, sid=r.sid, num_participants=r.num_participants,
                          num_publishers=r.num_publishers, created=r.creation_time, metadata=r.metadata)
