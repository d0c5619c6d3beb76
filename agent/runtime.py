"""The agent process: settings, engines, voices, tokens, rooms and the embedded transport."""

from __future__ import annotations

import asyncio
import logging
import time

from engines import default_engines
from engines.base import Engine
from engines.registry import VoiceRegistry

from .auth import TokenAuthority
from .gc_tuning import tune_gc
from .protocol import ErrorCode, ProtocolError, Synthesize, parse_command
from .rooms import Room, RoomRegistry
from .settings import Settings
from .listening import attach_listening
from .transports.webrtc import WebRTCTransport

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, settings: Settings, engines: list[Engine] | None = None):
        self.settings = settings
        self._owns_engines = engines is None  # engines passed in are shared: the caller closes them
        self.engines = engines if engines is not None else default_engines(settings)
        self.voices = VoiceRegistry(self.engines, settings.voice)
        self.tokens = TokenAuthority(settings.keys, settings.max_token_ttl_s)
        self.rooms = RoomRegistry(settings, self.voices)
        self.webrtc = WebRTCTransport(self.rooms, settings)
        self.listening = attach_listening(self.webrtc)  # barge-in: decodes nothing while off
        self.started = time.time()
        self._warming: asyncio.Task | None = None

    async def start(self) -> None:
        """Load the default voice in the background so the first utterance does not pay for it,
        and keep the garbage collector from pausing the frame clock."""
        tune_gc()
        voice = self.voices.default_voice
        warm = getattr(self.voices.engine_for(voice), "warm", None) if voice else None
        if warm is not None:
            self._warming = asyncio.get_running_loop().create_task(warm(voice), name="warm-default-voice")

    def speak(self, room: Room, body: dict, sender: str) -> tuple[str, str | None]:
        """The HTTP form of `synthesize`: (utterance id, dropped reason or None).
        Raises ProtocolError exactly where the data channel would answer `error`."""
        cmd = parse_command({"type": "synthesize", **body}, max_text_chars=self.settings.max_text_chars)
        assert isinstance(cmd, Synthesize)
        return room.speaker.synthesize(cmd, sender, time.perf_counter())

    def interrupt(self, room: Room, body: dict) -> None:
        cmd = parse_command({"type": "interrupt", **body}, max_text_chars=self.settings.max_text_chars)
        room.speaker.interrupt(cmd.id, sender=cmd.from_)

    def pause(self, room: Room, body: dict) -> None:
        """The HTTP form of `pause` / `resume` (body {"type": ...}): the data channel's path."""
        cmd = parse_command(body, max_text_chars=self.settings.max_text_chars)
        room.speaker.handle(cmd)

    async def close(self) -> None:
        self.rooms.draining = True
        if self._warming is not None:
            self._warming.cancel()
        for room in list(self.rooms.rooms.values()):  # rooms first: peers hear `interrupted` while channels are open
            self.rooms.close_room(room, "disconnect")
        await self.webrtc.close_all()
        await self.rooms.close_all()
        for engine in self.engines if self._owns_engines else ():
            close = getattr(engine, "close", None)
            if close is not None:
                close()


__all__ = ["Agent", "ErrorCode", "ProtocolError"]
