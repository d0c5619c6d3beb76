"""Rooms: a Speaker, the frame clock and a transport's sink, and the registry of rooms.

A room is created on first join and closed a grace period after its last peer leaves.
The transport gives each room one `RoomSink`: where frames and events go.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Callable, Protocol

import numpy as np

from engines.registry import VoiceRegistry

from . import metrics
from .clock import FrameClock
from .queue_caps import QueueCaps
from .protocol import ErrorCode, ProtocolError, error_event, event, parse_command, PROTOCOL_VERSION
from .settings import Settings
from .speaker import Speaker

log = logging.getLogger(__name__)


class RoomSink(Protocol):
    def send_frame(self, pcm: np.ndarray, slot: int) -> None:
        """One 20 ms frame (960 int16 samples at 48 kHz) for timestamp slot `slot`."""

    def send_event(self, data: str, to: str | None) -> None:
        """A JSON event for one client (`to`) or for all (None)."""

    def discard_buffered(self) -> None:
        """Drop audio queued downstream and not yet played (an interrupt); may do nothing."""

    def close(self) -> None: ...


class RoomLimit(Exception):
    """No room for another room or peer (HTTP 503)."""


class Room:
    def __init__(self, name: str, voices: VoiceRegistry, clock: FrameClock, settings: Settings,
                 sink_factory: Callable[["Room"], RoomSink]):
        self.name = name
        self.clock = clock
        self.settings = settings
        self.created = time.time()
        self.peers: dict[str, dict] = {}  # peer id -> public info
        self.last_slot = -1
        self.phase = 0  # set by the clock on subscribe
        self.frames_sent = 0
        self._subscribed = False
        self.output_taps: list[Callable[[np.ndarray, int], None]] = []  # (frame, slot): echo cancellers' far end
        self._close_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.speaker = Speaker(
            name, voices, self, voice=settings.voice, speed=settings.speed, danmu=settings.danmu,
            barge_in=settings.barge_in, max_text_chars=settings.max_text_chars,
            caps=QueueCaps.from_settings(settings),
        )
        self.speaker.on_idle = self._on_idle
        self.sink: RoomSink = sink_factory(self)

    # -- protocol in ---------------------------------------------------------------------

    def receive(self, raw: str | bytes | dict, sender: str, *, can_publish: bool = True) -> dict | None:
        """One client message. Returns the reply for the sender (an error, a pong) or None;
        never raises: bad input changes nothing in the room."""
        received = time.perf_counter()
        try:
            cmd = parse_command(raw, max_text_chars=self.settings.max_text_chars)
            if not can_publish and cmd.type != "ping":
                raise ProtocolError(ErrorCode.unauthorized, "this token may not send commands (no canPublishData)",
                                    getattr(cmd, "id", None))
            return self.speaker.handle(cmd, sender, received)
        except ProtocolError as err:
            metrics.ERRORS.labels(err.code.value).inc()
            return error_event(err)
        except Exception:  # a bug must cost one error reply, not the sender's connection
            log.exception("message handling failed", extra={"room": self.name, "peer": sender})
            metrics.ERRORS.labels(ErrorCode.bad_message.value).inc()
            return error_event(ProtocolError(ErrorCode.bad_message, "the message could not be handled"))

    def ready_event(self) -> dict:
        return event("ready", protocol=PROTOCOL_VERSION, room=self.name, voice=self.speaker.voice.id,
                     voices=[v.id for v in self.speaker.voices.voices()])

    # -- SpeakerOutput -------------------------------------------------------------------

    def emit(self, ev: dict, to: str | None = None) -> None:
        if self.closed:
            return
        self.sink.send_event(json.dumps(ev, ensure_ascii=False, separators=(",", ":")), to)

    def pull_now(self) -> None:
        """Send the Speaker's next frame now instead of at the next tick: the first frame of
        an utterance leaves as soon as it exists (TTFA), a fade as soon as it is asked for.
        At most one slot ahead of the clock, so pacing holds."""
        if self.closed:
            return
        if not self._subscribed:
            self._subscribed = True
            self.clock.subscribe(self)
        slot = self.clock.slot_now(self.phase)
        target = max(slot, self.last_slot + 1)
        if target <= slot + 1 and self._send(target):
            metrics.FRAMES_SENT.inc()

    def discard_buffered(self) -> None:
        self.sink.discard_buffered()

    def on_tick(self, slot: int) -> bool:
        """Send this slot's frame, if there is one; True when a frame went out."""
        return slot > self.last_slot and self._send(slot)

    def _send(self, slot: int) -> bool:
        frame = self.speaker.next_frame()
        if frame is None:
            return False
        self.sink.send_frame(frame, slot)
        for tap in self.output_taps:
            tap(frame, slot)
        self.last_slot = slot
        self.frames_sent += 1
        return True

    def _on_idle(self) -> None:
        # Nothing queued or playing: stop asking for frames (an idle room costs nothing).
        if self._subscribed and self.speaker.idle:
            self._subscribed = False
            self.clock.unsubscribe(self)

    # -- peers and lifecycle -------------------------------------------------------------

    def add_peer(self, peer_id: str, info: dict) -> None:
        if len(self.peers) >= self.settings.max_peers_per_room:
            raise RoomLimit(f"room {self.name!r} has {len(self.peers)} peers, the most allowed")
        self.peers[peer_id] = info
        metrics.PEERS.inc()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def remove_peer(self, peer_id: str, on_empty: Callable[["Room"], None]) -> None:
        if self.peers.pop(peer_id, None) is None:
            return
        metrics.PEERS.dec()
        if not self.closed:
            self.speaker.drop_sender(peer_id)  # its queue does not outlive it
        if not self.peers and not self.closed:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self.settings.room_grace_s, on_empty, self)

    def snapshot(self) -> dict:
        return {"room": self.name, "created": self.created, "peers": list(self.peers.values()),
                "frames_sent": self.frames_sent, **self.speaker.snapshot()}

    def close(self, reason: str = "disconnect") -> None:
        if self.closed:
            return
        self.speaker.close(reason)
        self.closed = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._subscribed:
            self.clock.unsubscribe(self)
            self._subscribed = False
        metrics.PEERS.dec(len(self.peers))
        self.peers.clear()
        self.sink.close()


class RoomRegistry:
    """All rooms of this process, sharing one frame clock and one voice registry."""

    def __init__(self, settings: Settings, voices: VoiceRegistry, clock: FrameClock | None = None):
        self.settings = settings
        self.voices = voices
        self.clock = clock or FrameClock()
        self.rooms: dict[str, Room] = {}
        self.sink_factory: Callable[[Room], RoomSink] | None = None
        self.draining = False

    def get(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def get_or_create(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is not None:
            return room
        if self.draining:
            raise RoomLimit("the agent is shutting down")
        if len(self.rooms) >= self.settings.max_rooms:
            raise RoomLimit(f"this agent already hosts {len(self.rooms)} rooms, the most allowed")
        assert self.sink_factory is not None, "a transport must set sink_factory"
        room = Room(name, self.voices, self.clock, self.settings, self.sink_factory)
        self.rooms[name] = room
        metrics.ROOMS.inc()
        log.info("room opened", extra={"room": name})
        return room

    def close_room(self, room: Room, reason: str = "disconnect") -> None:
        if room.peers and not self.draining:
            return  # someone joined during the grace period
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            metrics.ROOMS.dec()
        room.close(reason)
        log.info("room closed", extra={"room": room.name})

    async def close_all(self) -> None:
        self.draining = True
        for room in list(self.rooms.values()):
            self.close_room(room, "disconnect")
        await self.clock.stop()
