"""Request and response bodies: the OpenAPI schema of the control plane."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"room": "demo", "identity": "alice"}]})
    room: str = Field(min_length=1, max_length=128, pattern=r"^[\w.\-]+$")
    identity: str = Field(min_length=1, max_length=128)
    name: str | None = Field(None, max_length=128)
    ttl_s: int = Field(3600, ge=60, le=7 * 86400)
    can_publish_data: bool = True
    can_subscribe: bool = True


class TokenResponse(BaseModel):
    token: str
    url: str


class VoiceOut(BaseModel):
    id: str
    engine: str
    language: str
    name: str
    sample_rate: int
    quality: str | None = None
    speakers: int | None = None


class EngineOut(BaseModel):
    name: str
    available: bool
    reason: str | None = None
    voices: int


class Accepted(BaseModel):
    id: str
    room: str
    status: Literal["queued", "dropped", "interrupted"] = "queued"
    reason: str | None = None


class RoomSummary(BaseModel):
    room: str
    created: float
    peers: list[dict]
    frames_sent: int
    voice: str
    playing: dict | None
    queue: list[dict]


class SpeakBody(BaseModel):
    """The body of a `synthesize` message (PROTOCOL.md); `type` may be omitted."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "examples": [{"text": "Hello from HTTP.", "priority": "high"}]})
    text: str
    type: Literal["synthesize"] | None = None
    id: str | None = None
    voice: str | None = None
    priority: Literal["normal", "high", "critical"] | None = None
    speed: float | None = None


class InterruptBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["interrupt"] | None = None
    id: str | None = None
