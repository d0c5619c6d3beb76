"""Request and response bodies: the OpenAPI schema of the control plane."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.protocol import Interrupt, Pause, Speed, Synthesize, VoiceRef
from agent.room_names import MAX_ROOM_NAME_CHARS, check_room_name


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error."""

    type: str = Field(examples=["https://tts-agent.dev/problems/unknown_voice"])
    title: str = Field(examples=["Unprocessable Content"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["no voice 'xx'; see GET /v1/voices"])
    code: str | None = Field(None, description="the protocol's error code, where one applies")
    errors: list[dict] | None = Field(None, description="the fields at fault: `loc` (path) and `msg`")


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"room": "demo", "identity": "alice"}]})
    room: str = Field(min_length=1, max_length=MAX_ROOM_NAME_CHARS,
                      description="any letters, digits and spaces; no control characters, URL delimiters or `..`")
    identity: str = Field(min_length=1, max_length=128)
    name: str | None = Field(None, max_length=128)
    ttl_s: int = Field(3600, ge=60)  # at most settings.max_token_ttl_s, checked by the route
    can_publish_data: bool = Field(True, description="may send commands on the data channel")
    can_subscribe: bool = Field(True, description="may open a WHEP session to listen")

    @field_validator("room")
    @classmethod
    def _room_name(cls, room: str) -> str:
        return check_room_name(room)  # InvalidRoomName is a ValueError: a 422 naming the field


class TokenResponse(BaseModel):
    token: str = Field(description="a LiveKit access token (JWT, HS256) for the room")
    url: str = Field(description="where to connect: this agent, or the LiveKit server in LiveKit mode")


class VoiceOut(BaseModel):
    id: str = Field(examples=["espeak:en-us"])
    engine: str = Field(examples=["espeak"])
    language: str = Field(examples=["en-us"])
    name: str
    sample_rate: int = Field(examples=[22050])
    quality: str | None = None
    speakers: int | None = None


class EngineOut(BaseModel):
    name: str
    available: bool
    reason: str | None = None
    voices: int


class Accepted(BaseModel):
    id: str = Field(description="the utterance id (`*` for an interrupt without id, a pause or a resume)")
    room: str
    status: Literal["queued", "dropped", "interrupted", "paused", "resumed"] = "queued"
    reason: str | None = Field(None, description="why a danmu rule dropped it")


class PeerOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    identity: str
    transport: str


class PlayingOut(BaseModel):
    id: str
    text: str = Field(description="its first 200 characters")
    played_ms: int


class QueuedOut(BaseModel):
    id: str
    priority: Literal["normal", "high", "critical"]
    text: str = Field(description="its first 200 characters")


class RoomSummary(BaseModel):
    room: str
    created: float = Field(description="Unix time the room opened")
    peers: list[PeerOut]
    frames_sent: int
    voice: str = Field(description="the room's default voice")
    playing: PlayingOut | None
    paused: bool = Field(False, description="held by `pause` or by barge-in: nothing plays until resumed")
    queue: list[QueuedOut]


class SpeakBody(Synthesize):
    """The body of a `synthesize` message (PROTOCOL.md), validated exactly as the data channel
    validates it; `type` may be omitted."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "Hello from HTTP.", "priority": "high"}]})


class InterruptBody(Interrupt):
    """The body of an `interrupt` message: with `id` that utterance, with `from` every utterance of
    that sender (a banned chat user), with neither everything."""


class PauseBody(Pause):
    """The body of a `pause` message: `now` stops at once (with the fade) instead of at the
    next sentence boundary."""


class SynthesizeRequest(BaseModel):
    """Text to render to an audio file."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "examples": [{"text": "Welcome to the stream.", "voice": "en", "format": "ogg"}]})
    text: str = Field(min_length=1, description="at most the agent's `max_text_chars` characters")
    voice: VoiceRef | None = Field(None, description="a voice id or a language tag; default: the agent's voice")
    speed: Speed | None = None
    format: Literal["wav", "ogg", "mp3"] = Field(
        "wav", description="`wav`: PCM s16le at the voice's rate; `ogg`: Opus, 48 kHz; `mp3`: MPEG layer III")
