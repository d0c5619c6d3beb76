"""Room protocol v1 (shared/PROTOCOL.md): the message schema and nothing else.

`parse_command` is the one place where client input becomes a typed command; anything that
is not valid raises `ProtocolError` with the protocol's error code.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_DEPTH = 32  # no valid message nests deeper; echoing deeper values (ping's t) could not be encoded back


class ErrorCode(str, Enum):
    bad_message = "bad_message"
    text_too_long = "text_too_long"
    unknown_voice = "unknown_voice"
    unknown_utterance = "unknown_utterance"
    duplicate_id = "duplicate_id"
    queue_full = "queue_full"
    rate_limited = "rate_limited"
    engine_error = "engine_error"
    unauthorized = "unauthorized"


class ProtocolError(Exception):
    def __init__(self, code: ErrorCode, message: str, id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


Priority = Literal["normal", "high", "critical"]
PRIORITY_RANK = {"critical": 0, "high": 1, "normal": 2}


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DanmuRules(_Message):
    max_queue: int | None = Field(None, ge=1, le=10_000)
    max_chars: int | None = Field(None, ge=1, le=100_000)
    dedupe_s: float | None = Field(None, ge=0, le=86_400)
    per_sender_per_min: int | None = Field(None, ge=1, le=100_000)
    max_wait_s: float | None = Field(None, gt=0, le=86_400)
    blocked_words: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(None, max_length=1000)
    template: str | None = Field(None, min_length=1, max_length=500)
    summary: str | None = Field(None, min_length=1, max_length=500)  # "and {n} more messages"
    max_speed: float | None = Field(None, ge=0.5, le=2.0)


class BargeIn(_Message):
    mode: Literal["interrupt", "duck", "off"] = "off"
    min_speech_ms: int = Field(250, ge=0, le=10_000)
    threshold: float = Field(0.5, gt=0, lt=1)
    clear_queue: bool = True
    # with `interrupt`: speech first pauses the agent; only speech still going this long after
    # it began interrupts, shorter speech (a cough, "uh-huh") resumes it with nothing lost
    confirm_ms: int = Field(700, ge=0, le=10_000)  # bench: all 24 eSpeak words (300-600 ms) resume, all sentences interrupt
    echo_cancel: bool = True  # cancel the agent's own voice from what it hears, before the VAD


UtteranceId = Annotated[str, Field(min_length=1, max_length=128)]
Speed = Annotated[float, Field(ge=0.5, le=2.0)]  # strict: JSON integers pass, "1.5" and true do not
VoiceRef = Annotated[str, Field(min_length=1, max_length=128)]


class Synthesize(_Message):
    type: Literal["synthesize"] = "synthesize"
    text: str = Field(min_length=1, examples=["Hello from the agent."])
    id: UtteranceId | None = None
    voice: VoiceRef | None = Field(None, examples=["espeak:en-us", "en"])
    priority: Priority = "normal"
    speed: Speed | None = None
    final: bool = True
    from_: str | None = Field(None, alias="from", max_length=200)

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class Append(_Message):
    type: Literal["append"] = "append"
    id: UtteranceId
    text: str
    final: bool = False


class Interrupt(_Message):
    type: Literal["interrupt"] = "interrupt"
    id: UtteranceId | None = None
    from_: str | None = Field(None, alias="from", min_length=1, max_length=200)  # every utterance of this sender

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_target(self):
        if self.id is not None and self.from_ is not None:
            raise ValueError("give `id` or `from`, not both")
        return self


class Pause(_Message):
    type: Literal["pause"] = "pause"
    now: bool = False  # at once with the fade, instead of at the next sentence boundary


class Resume(_Message):
    type: Literal["resume"] = "resume"


class Configure(_Message):
    type: Literal["configure"] = "configure"
    voice: VoiceRef | None = None
    speed: Speed | None = None
    danmu: DanmuRules | None = None
    barge_in: BargeIn | None = None


class Ping(_Message):
    type: Literal["ping"] = "ping"
    t: Any = None


Command = Annotated[Union[Synthesize, Append, Interrupt, Pause, Resume, Configure, Ping], Field(discriminator="type")]
_command_adapter: TypeAdapter[Command] = TypeAdapter(Command)


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if p not in ("synthesize", "append", "interrupt", "pause", "resume", "configure", "ping"))
    return f"{where}: {first['msg']}" if where else first["msg"]


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def parse_command(raw: str | bytes | dict, *, max_text_chars: int) -> Command:
    """Validate one client message; raise ProtocolError with the protocol's code."""
    if isinstance(raw, (str, bytes)):
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
        if size > MAX_MESSAGE_BYTES:
            raise ProtocolError(ErrorCode.bad_message, f"message larger than {MAX_MESSAGE_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting past json's limit
            raise ProtocolError(ErrorCode.bad_message, f"not JSON: {exc}") from None
    else:
        data = raw
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.bad_message, "a message is a JSON object")
    if _deeper_than(data, MAX_DEPTH):
        raise ProtocolError(ErrorCode.bad_message, f"a message nests at most {MAX_DEPTH} levels deep")
    msg_id = data.get("id") if isinstance(data.get("id"), str) else None
    if "type" not in data:
        raise ProtocolError(ErrorCode.bad_message, "missing field 'type'", msg_id)
    try:
        cmd = _command_adapter.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.bad_message, _describe(exc), msg_id) from None
    text = getattr(cmd, "text", None)
    if text is not None and len(text) > max_text_chars:
        raise ProtocolError(
            ErrorCode.text_too_long, f"text has {len(text)} characters, at most {max_text_chars} allowed", msg_id
        )
    return cmd


def event(type_: str, **fields: Any) -> dict:
    """An agent → client event; every one carries `ts`, the agent's wall clock in ms."""
    fields = {k: v for k, v in fields.items() if v is not None}
    return {"type": type_, **fields, "ts": int(time.time() * 1000)}


def error_event(err: ProtocolError) -> dict:
    return event("error", id=err.id, code=err.code.value, message=err.message)


def encode_event(ev: dict) -> bytes:
    """An event as it goes on the wire (UTF-8 JSON, compact): the one place events are encoded."""
    return json.dumps(ev, ensure_ascii=False, separators=(",", ":")).encode()
