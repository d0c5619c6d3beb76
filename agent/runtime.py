"""The agent process, composed in one place for `serve`, `worker` and `join`.

`build_agent(settings)` is the composition root: logging, engines, voices, tokens, rooms
and (for `serve`) the embedded WebRTC transport. `Agent.start()` tunes the garbage
collector and warms the default voice; every command goes through it, so they cannot drift.

The control plane talks to the agent through the small interface at the bottom of `Agent`
(rooms list and lookup, HTTP commands, WHEP sessions, the clock's health), never through
its rooms, clock or transport sessions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from engines import default_engines
from engines.base import Engine
from engines.registry import VoiceRegistry

from .auth import TokenAuthority
from .gc_tuning import tune_gc
from .logs import setup_logging
from .protocol import ErrorCode, ProtocolError
from .rooms import RoomLimit, RoomRegistry
from .settings import Settings

log = logging.getLogger(__name__)


class UnknownRoom(LookupError):
    """No such room (a room exists while a peer is in it): HTTP 404."""


@dataclass(frozen=True)
class WhepAnswer:
    session_id: str
    peer_id: str
    sdp: str
    can_publish: bool


@dataclass(frozen=True)
class WhepInfo:
    session_id: str
    room: str
    peer_id: str
    identity: str


def build_agent(settings: Settings, *, embedded: bool = True, engines: list[Engine] | None = None) -> "Agent":
    """The one composition root: what `serve` (embedded rooms), `worker` and `join` (LiveKit) run."""
    setup_logging(settings.log_format, settings.log_level)
    return Agent(settings, engines, embedded=embedded)


class Agent:
    def __init__(self, settings: Settings, engines: list[Engine] | None = None, *, embedded: bool = True):
        self.settings = settings
        self._owns_engines = engines is None  # engines passed in are shared: the caller closes them
        self.engines = engines if engines is not None else default_engines(settings)
        self.voices = VoiceRegistry(self.engines, settings.voice)
        self.tokens = TokenAuthority(settings.keys, settings.max_token_ttl_s)
        self.rooms = RoomRegistry(settings, self.voices)
        self.webrtc = None
        if embedded:
            from .transports.webrtc import WebRTCTransport

            self.webrtc = WebRTCTransport(self.rooms, settings)
        self.started = time.time()
        self._warming: asyncio.Task | None = None

    @property
    def listening(self):
        """Barge-in listeners of the embedded transport (tests and benchmarks read totals)."""
        return self.webrtc.listening if self.webrtc is not None else None

    async def start(self) -> None:
        """Load the default voice in the background so the first utterance does not pay for it,
        and keep the garbage collector from pausing the frame clock."""
        tune_gc()
        voice = self.voices.default_voice
        warm = getattr(self.voices.engine_for(voice), "warm", None) if voice else None
        if warm is not None:
            self._warming = asyncio.get_running_loop().create_task(warm(voice), name="warm-default-voice")

    async def close(self) -> None:
        self.rooms.drain()
        if self._warming is not None:
            self._warming.cancel()
        for room in list(self.rooms.rooms.values()):  # rooms first: peers hear `interrupted` while channels are open
            self.rooms.close_room(room, "disconnect")
        if self.webrtc is not None:
            await self.webrtc.close_all()
        await self.rooms.close_all()
        for engine in self.engines if self._owns_engines else ():
            close = getattr(engine, "close", None)
            if close is not None:
                close()

    # -- the control plane's interface ---------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.rooms.draining

    def room_names(self) -> list[str]:
        return list(self.rooms.rooms)

    def room_snapshots(self) -> list[dict]:
        return [room.snapshot() for room in self.rooms.rooms.values()]

    def room_snapshot(self, name: str) -> dict:
        return self._room(name).snapshot()

    def speak(self, room: str, body: dict, sender: str) -> tuple[str, str | None]:
        """The HTTP form of `synthesize`: (utterance id, dropped reason or None). Raises
        UnknownRoom, or ProtocolError exactly where the data channel would answer `error`."""
        return self._room(room).speak(body, sender)

    def interrupt(self, room: str, body: dict) -> None:
        self._room(room).interrupt(body)

    def pause(self, room: str, body: dict) -> None:
        """`pause` over HTTP; raises UnknownRoom or ProtocolError."""
        self._room(room).pause(body)

    def resume(self, room: str) -> None:
        self._room(room).resume()

    async def open_whep(self, room: str, offer_sdp: str, identity: str, *, can_publish: bool) -> WhepAnswer:
        """Answer a WHEP offer; raises OfferError (400) or RoomLimit (503)."""
        if self.webrtc is None:
            raise RoomLimit("this agent serves no embedded rooms")
        session = await self.webrtc.answer(room, offer_sdp, identity, can_publish=can_publish)
        return WhepAnswer(session.id, session.peer_id, session.pc.localDescription.sdp, session.can_publish)

    def whep_session(self, session_id: str) -> WhepInfo | None:
        session = self.webrtc.sessions.get(session_id) if self.webrtc is not None else None
        if session is None:
            return None
        return WhepInfo(session.id, session.room.name, session.peer_id, session.identity)

    def whep_sessions_held(self, room: str, identity: str) -> int:
        """WHEP sessions `identity` holds in `room` (its share of the room's peers)."""
        if self.webrtc is None:
            return 0
        return sum(1 for s in self.webrtc.sessions.values() if s.room.name == room and s.identity == identity)

    async def close_whep(self, session_id: str) -> bool:
        return self.webrtc is not None and await self.webrtc.end(session_id)

    async def clock_problem(self, timeout_s: float) -> str | None:
        """Rooms that wait for frames need the frame clock to tick; idle rooms need nothing."""
        clock = self.rooms.clock
        if not clock.subscribers:
            return None
        if not clock.running:
            return f"the frame clock is stopped with {clock.subscribers} rooms waiting for frames"
        ticks = clock.ticks
        deadline = time.monotonic() + timeout_s
        while clock.ticks == ticks:
            if time.monotonic() > deadline or not clock.running:
                return f"the frame clock did not tick in {timeout_s} s"
            await asyncio.sleep(clock.frame_s / 2)
        return None

    def _room(self, name: str):
        room = self.rooms.get(name)
        if room is None:
            raise UnknownRoom(name)
        return room


__all__ = ["Agent", "ErrorCode", "ProtocolError", "UnknownRoom", "WhepAnswer", "WhepInfo", "build_agent"]
