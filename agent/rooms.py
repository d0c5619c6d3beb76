"""Rooms: a Speaker, the frame clock and a transport's sink, and the registry of rooms.

The Room is the only door into the core. A transport opens a room with its sink
(`RoomRegistry.open(name, make_sink)`), adds and removes its peers, hands in their messages
(`receive`), and subscribes to barge-in changes; the control plane's HTTP commands come in
through `speak` and `interrupt`. Nothing outside writes a Room's fields: they are read-only
properties. The Room owns its clock subscription and survives a failing sink: one failed
frame is logged and the next goes out as usual; `MAX_FAILED_FRAMES` in a row close the
room with an `error` event to its peers. A room is created on first join and closed a grace
period after its last peer leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from engines.registry import VoiceRegistry

from . import metrics
from .budget import MessageBudget, Verdict
from .clock import FrameClock
from .queue_caps import QueueCaps
from .protocol import (PROTOCOL_VERSION, BargeIn, Configure, ErrorCode, Interrupt, Pause, ProtocolError, Resume,
                       Synthesize, encode_event, error_event, event, parse_command)
from .settings import Settings
from .speaker import Speaker

log = logging.getLogger(__name__)

MAX_FAILED_FRAMES = 5  # failed frames in a row (100 ms) before a room gives up and closes
MAX_IDLE_BUDGETS = 256  # senders' message budgets kept beyond the room's peers (LiveKit participants)


class RoomSink(Protocol):
    def send_frame(self, pcm: np.ndarray, slot: int) -> None:
        """One 20 ms frame (960 int16 samples at 48 kHz) for timestamp slot `slot`."""

    def send_event(self, data: bytes, to: str | None) -> None:
        """An encoded JSON event (UTF-8) for one client (`to`) or for all (None): the same
        bytes for every peer."""

    def discard_buffered(self) -> int | None:
        """Drop audio queued downstream and not yet played (an interrupt); returns how many
        samples (48 kHz) were dropped, so `played_ms` counts only what was heard."""

    def close(self) -> None: ...


class RoomLimit(Exception):
    """No room for another room or peer (HTTP 503)."""


class Room:
    def __init__(self, name: str, voices: VoiceRegistry, clock: FrameClock, settings: Settings,
                 make_sink: Callable[["Room"], RoomSink], *,
                 on_empty: Callable[["Room"], None] | None = None,
                 on_failed: Callable[["Room"], None] | None = None):
        self._name = name
        self._clock = clock
        self._settings = settings
        self._created = time.time()
        self._peers: dict[str, Mapping[str, Any]] = {}  # peer id -> public info (read-only)
        self._disconnects: dict[str, Callable[[], None]] = {}  # peer id -> how to drop it (a flooder)
        self._budgets: dict[str, MessageBudget] = {}  # sender -> data-channel budget
        self._barge_in_watchers: list[Callable[[BargeIn], None]] = []
        self._on_empty = on_empty
        self._on_failed = on_failed
        self.last_slot = -1
        self.phase = 0  # set by the clock on subscribe
        self._frames_sent = 0
        self._failed_frames = 0  # in a row
        self._subscribed = False
        self._output_taps: list[Callable[[np.ndarray, int], None]] = []  # (frame, slot): echo cancellers' far end
        self._close_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._speaker = Speaker(
            name, voices, self, voice=settings.voice, speed=settings.speed, danmu=settings.danmu,
            barge_in=settings.barge_in, max_text_chars=settings.max_text_chars,
            caps=QueueCaps.from_settings(settings),
        )
        self._speaker.on_idle = self._on_idle
        self._sink: RoomSink = make_sink(self)

    # -- read-only state -----------------------------------------------------------------

    name = property(lambda self: self._name)
    settings = property(lambda self: self._settings)
    created = property(lambda self: self._created)
    closed = property(lambda self: self._closed)
    frames_sent = property(lambda self: self._frames_sent)
    sink = property(lambda self: self._sink)
    speaker = property(lambda self: self._speaker)
    subscribed = property(lambda self: self._subscribed)

    @property
    def peers(self) -> Mapping[str, Mapping[str, Any]]:
        return MappingProxyType(self._peers)

    @property
    def idle(self) -> bool:
        """Nothing playing or queued."""
        return self._speaker.idle

    @property
    def barge_in(self) -> BargeIn:
        return self._speaker.barge_in

    # -- protocol in ---------------------------------------------------------------------

    def receive(self, raw: str | bytes | dict, sender: str, *, can_publish: bool = True) -> dict | None:
        """One client message. Returns the reply for the sender (an error, a pong) or None;
        never raises: bad input changes nothing in the room."""
        verdict = self._budget(sender).take()
        if verdict is not Verdict.accept:
            return self._over_budget(sender, verdict)
        received = time.perf_counter()
        try:
            cmd = parse_command(raw, max_text_chars=self._settings.max_text_chars)
            if not can_publish and cmd.type != "ping":
                raise ProtocolError(ErrorCode.unauthorized, "this token may not send commands (no canPublishData)",
                                    getattr(cmd, "id", None))
            before = self._speaker.barge_in
            reply = self._speaker.handle(cmd, sender, received)
            if isinstance(cmd, Configure) and self._speaker.barge_in is not before:
                self._barge_in_changed()
            return reply
        except ProtocolError as err:
            metrics.ERRORS.labels(err.code.value).inc()
            return error_event(err)
        except Exception:  # a bug must cost one error reply, not the sender's connection
            log.exception("message handling failed", extra={"room": self._name, "peer": sender})
            metrics.ERRORS.labels(ErrorCode.bad_message.value).inc()
            return error_event(ProtocolError(ErrorCode.bad_message, "the message could not be handled"))

    def speak(self, body: dict, sender: str) -> tuple[str, str | None]:
        """`synthesize` over HTTP: (utterance id, dropped reason or None). Raises ProtocolError
        exactly where the data channel would answer `error`; the HTTP edge counts and answers it."""
        cmd = parse_command({**body, "type": "synthesize"}, max_text_chars=self._settings.max_text_chars)
        assert isinstance(cmd, Synthesize)
        return self._speaker.synthesize(cmd, sender, time.perf_counter())

    def interrupt(self, body: dict) -> None:
        """`interrupt` over HTTP; raises ProtocolError as `speak` does."""
        cmd = parse_command({**body, "type": "interrupt"}, max_text_chars=self._settings.max_text_chars)
        assert isinstance(cmd, Interrupt)
        self._speaker.handle(cmd)

    def pause(self, body: dict) -> None:
        """`pause` over HTTP (body: its fields, e.g. {"now": true}); raises ProtocolError as `speak` does."""
        cmd = parse_command({**body, "type": "pause"}, max_text_chars=self._settings.max_text_chars)
        assert isinstance(cmd, Pause)
        self._speaker.handle(cmd)

    def resume(self) -> None:
        """`resume` over HTTP."""
        self._speaker.handle(Resume(type="resume"))

    def slot_now(self) -> int:
        """The frame clock's slot now, on this room's phase (an echo canceller's time base)."""
        return self._clock.slot_now(self.phase)

    def add_output_tap(self, tap: Callable[[np.ndarray, int], None]) -> None:
        """Call `tap(frame, slot)` with every frame the room sends (an echo canceller's far end)."""
        if tap not in self._output_taps:
            self._output_taps.append(tap)

    def remove_output_tap(self, tap: Callable[[np.ndarray, int], None]) -> None:
        if tap in self._output_taps:
            self._output_taps.remove(tap)

    def ready_event(self) -> dict:
        return event("ready", protocol=PROTOCOL_VERSION, room=self._name, voice=self._speaker.voice.id,
                     voices=[v.id for v in self._speaker.voices.voices()])

    def on_barge_in(self, watcher: Callable[[BargeIn], None]) -> Callable[[], None]:
        """Call `watcher(config)` whenever a `configure` changes barge-in; returns the unsubscribe."""
        self._barge_in_watchers.append(watcher)
        return lambda: self._barge_in_watchers.remove(watcher) if watcher in self._barge_in_watchers else None

    def _barge_in_changed(self) -> None:
        config = self._speaker.barge_in
        for watcher in list(self._barge_in_watchers):
            try:
                watcher(config)
            except Exception:
                log.exception("barge-in watcher failed", extra={"room": self._name})

    # -- the data-channel budget ---------------------------------------------------------

    def _budget(self, sender: str) -> MessageBudget:
        budget = self._budgets.get(sender)
        if budget is None:
            if len(self._budgets) > len(self._peers) + MAX_IDLE_BUDGETS:
                self._budgets = {s: b for s, b in self._budgets.items() if s in self._peers or not b.full}
            s = self._settings
            budget = self._budgets[sender] = MessageBudget(s.peer_messages_per_s, s.peer_message_burst,
                                                           s.peer_flood_drops)
        return budget

    def _over_budget(self, sender: str, verdict: Verdict) -> dict | None:
        if verdict is Verdict.disconnect:
            disconnect = self._disconnects.pop(sender, None)
            if disconnect is not None:
                log.warning("peer disconnected: it kept flooding its data channel", extra={
                    "room": self._name, "peer": sender, "dropped": self._budgets[sender].dropped})
                metrics.ERRORS.labels(ErrorCode.rate_limited.value).inc()
                disconnect()
                return error_event(ProtocolError(ErrorCode.rate_limited, "too many messages: disconnecting"))
            verdict = Verdict.drop  # nothing to disconnect (a LiveKit participant): keep dropping
        if verdict is Verdict.drop_and_tell:
            metrics.ERRORS.labels(ErrorCode.rate_limited.value).inc()
            return error_event(ProtocolError(
                ErrorCode.rate_limited,
                f"more than {self._settings.peer_messages_per_s:g} messages a second: messages are being dropped"))
        return None

    # -- SpeakerOutput -------------------------------------------------------------------

    def emit(self, ev: dict, to: str | None = None) -> None:
        """One event, encoded once: the same bytes go to every peer."""
        if self._closed:
            return
        try:
            self._sink.send_event(encode_event(ev), to)
        except Exception:  # a sink failing on an event costs that event, not the room
            log.exception("room event failed", extra={"room": self._name})

    def pull_now(self) -> None:
        """Send the Speaker's next frame now instead of at the next tick: the first frame of
        an utterance leaves as soon as it exists (TTFA), a fade as soon as it is asked for.
        At most one slot ahead of the clock, so pacing holds."""
        if self._closed:
            return
        self._subscribe()
        slot = self._clock.slot_now(self.phase)
        target = max(slot, self.last_slot + 1)
        if target <= slot + 1 and self._send(target):
            metrics.FRAMES_SENT.inc()

    def discard_buffered(self) -> int:
        try:
            return self._sink.discard_buffered() or 0
        except Exception:
            log.exception("room discard failed", extra={"room": self._name})
            return 0

    def on_tick(self, slot: int) -> bool:
        """Send this slot's frame, if there is one; True when a frame went out. Never raises."""
        return slot > self.last_slot and self._send(slot)

    def _send(self, slot: int) -> bool:
        try:
            frame = self._speaker.next_frame()
            if frame is None:
                return False
            self._sink.send_frame(frame, slot)
        except Exception:
            self._frame_failed(slot)
            return False
        self._failed_frames = 0
        self.last_slot = slot
        for tap in tuple(self._output_taps):  # () is a constant: nothing allocated while none listens
            try:
                tap(frame, slot)
            except Exception:  # the frame went out: a broken listener must not stop the room
                log.exception("room output tap failed; it is removed", extra={"room": self._name})
                self._output_taps.remove(tap)
        self._frames_sent += 1
        return True

    def _frame_failed(self, slot: int) -> None:
        self._failed_frames += 1
        self.last_slot = slot  # that slot is spent: the next frame goes out at the next one
        if self._failed_frames == 1:
            log.exception("room frame failed; the next frame goes out as usual", extra={"room": self._name})
        if self._failed_frames >= MAX_FAILED_FRAMES and not self._closed:
            log.error("room closed: %d frames in a row failed", self._failed_frames, extra={"room": self._name})
            self.emit(event("error", code=ErrorCode.engine_error.value,
                            message="the room's audio output keeps failing: the room is closing"))
            if self._on_failed is not None:
                self._on_failed(self)
            else:
                self.close("disconnect")

    def _subscribe(self) -> None:
        if not self._subscribed:
            self._subscribed = True
            self._clock.subscribe(self)

    def _unsubscribe(self) -> None:
        if self._subscribed:
            self._subscribed = False
            self._clock.unsubscribe(self)

    def _on_idle(self) -> None:
        # Nothing queued or playing: stop asking for frames (an idle room costs nothing).
        if self._speaker.idle:
            self._unsubscribe()

    # -- peers and lifecycle -------------------------------------------------------------

    def add_peer(self, peer_id: str, info: dict, *, disconnect: Callable[[], None] | None = None) -> None:
        """A peer joins; `disconnect` drops it should it flood its data channel."""
        if self._closed:
            raise RoomLimit(f"room {self._name!r} is closing")
        if peer_id in self._peers:
            raise ValueError(f"peer {peer_id!r} is already in room {self._name!r}")
        if len(self._peers) >= self._settings.max_peers_per_room:
            raise RoomLimit(f"room {self._name!r} has {len(self._peers)} peers, the most allowed")
        self._peers[peer_id] = MappingProxyType(dict(info))
        if disconnect is not None:
            self._disconnects[peer_id] = disconnect
        metrics.PEERS.inc()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def sender_left(self, sender: str) -> None:
        """A sender that is not a peer left (a LiveKit participant): its queued lines go."""
        self._budgets.pop(sender, None)
        if not self._closed:
            self._speaker.drop_sender(sender)

    def update_peer(self, peer_id: str, **info: Any) -> None:
        if peer_id in self._peers:
            self._peers[peer_id] = MappingProxyType({**self._peers[peer_id], **info})

    def remove_peer(self, peer_id: str) -> None:
        """A peer leaves; the last one starts the grace period after which the room closes."""
        if self._peers.pop(peer_id, None) is None:
            return
        self._disconnects.pop(peer_id, None)
        self._budgets.pop(peer_id, None)
        metrics.PEERS.dec()
        if not self._closed:
            self._speaker.drop_sender(peer_id)  # its queue does not outlive it
        if not self._peers and not self._closed and self._on_empty is not None:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self._settings.room_grace_s, self._on_empty, self)

    def snapshot(self) -> dict:
        return {"room": self._name, "created": self._created, "peers": [dict(p) for p in self._peers.values()],
                "frames_sent": self._frames_sent, **self._speaker.snapshot()}

    def close(self, reason: str = "disconnect") -> None:
        if self._closed:
            return
        self._speaker.close(reason)
        self._closed = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._unsubscribe()
        metrics.PEERS.dec(len(self._peers))
        self._peers.clear()
        self._disconnects.clear()
        self._barge_in_watchers.clear()
        self._sink.close()


class RoomRegistry:
    """All rooms of this process, sharing one frame clock and one voice registry."""

    def __init__(self, settings: Settings, voices: VoiceRegistry, clock: FrameClock | None = None):
        self.settings = settings
        self.voices = voices
        self.clock = clock or FrameClock()
        self._rooms: dict[str, Room] = {}
        self._makers: dict[str, Callable[[Room], RoomSink]] = {}  # room name -> the sink maker it opened with
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Open no more rooms (shutting down); closing a room no longer waits for its peers."""
        self._draining = True

    @property
    def rooms(self) -> Mapping[str, Room]:
        return MappingProxyType(self._rooms)

    def get(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def open(self, name: str, make_sink: Callable[[Room], RoomSink]) -> Room:
        """The room `name`, opened with a sink from `make_sink` if it is not open yet."""
        room = self._rooms.get(name)
        if room is not None:
            if self._makers[name] != make_sink:
                raise RoomLimit(f"room {name!r} is served by another transport")
            return room
        if self.draining:
            raise RoomLimit("the agent is shutting down")
        if len(self._rooms) >= self.settings.max_rooms:
            raise RoomLimit(f"this agent already hosts {len(self._rooms)} rooms, the most allowed")
        room = Room(name, self.voices, self.clock, self.settings, make_sink,
                    on_empty=self.close_room, on_failed=lambda r: self.close_room(r, "disconnect", force=True))
        self._rooms[name] = room
        self._makers[name] = make_sink
        metrics.ROOMS.inc()
        log.info("room opened", extra={"room": name})
        return room

    def close_room(self, room: Room, reason: str = "disconnect", *, force: bool = False) -> None:
        if room.peers and not (self.draining or force):
            return  # someone joined during the grace period
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
            del self._makers[room.name]
            metrics.ROOMS.dec()
        if not room.closed:
            room.close(reason)
            log.info("room closed", extra={"room": room.name})

    async def close_all(self) -> None:
        self.drain()
        for room in list(self._rooms.values()):
            self.close_room(room, "disconnect")
        await self.clock.stop()
