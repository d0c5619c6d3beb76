"""Rooms on a LiveKit server, through the LiveKit rtc SDK (the only module importing it).

The agent joins a LiveKit room as a participant: one audio track fed from an
`rtc.AudioSource`, the room protocol on reliable data packets with topic `tts`, and each
caption sentence also published as a LiveKit transcription (text stream on
`lk.transcription`, and the deprecated transcription packet beside it) so standard LiveKit
UIs show it. The agent's `lk.agent.state` attribute follows what it does (livekit_state.py);
a dispatch's metadata sets the room's starting voice, speed, danmu and barge-in
(livekit_metadata.py).

Two long-lived tasks per room carry everything out, so the clock's 20 ms tick never awaits
and never creates a task:
- `AudioPump` takes frames from the clock (sync `push`) and awaits
  `AudioSource.capture_frame` one after another; frames come from a small free list.
- `Outbox` sends data packets and transcriptions in the order the room produced them.

Barge-in (the agent listens): while the room's barge-in mode is not `off`, the agent
subscribes to the participants' microphone tracks (never its own or another agent's) and
reads each through `rtc.AudioStream` at 16 kHz mono into a `Listener` (agent/listening.py).
While it is `off` nothing is subscribed, so the SFU forwards nothing and nothing is decoded.
The Speaker has no hook for a mode change, so the transport looks again where one can
happen: after every data packet (a `configure`), at join (the agent's settings) and when a
participant or a track appears.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

import numpy as np
from livekit import rtc

from ..audio import FRAME_SAMPLES, SAMPLE_RATE
from ..listening import Listener, Listening
from ..rooms import Room, RoomRegistry
from ..vad import SAMPLE_RATE as VAD_RATE
from .livekit_metadata import apply_dispatch_metadata
from .livekit_state import ATTR_AGENT_STATE, AgentState, legacy_transcription

log = logging.getLogger(__name__)

TOPIC = "tts"
TRANSCRIPTION_TOPIC = "lk.transcription"
ATTR_SEGMENT_ID = "lk.segment_id"
ATTR_TRACK_ID = "lk.transcribed_track_id"
ATTR_FINAL = "lk.transcription_final"
TRACK_NAME = "tts-agent"
# The source's own queue: the room runs at most one frame ahead of the clock, so 40 ms is
# the steady-state peak; 60 ms leaves one frame of scheduling slack. An interrupt clears it.
SOURCE_QUEUE_MS = 60
AUDIO_BACKLOG_FRAMES = 5  # frames waiting for capture_frame; beyond this the oldest is dropped
OUTBOX_LIMIT = 1000  # pending data packets; a stuck connection never grows memory
SERVER_SENDER = "livekit-server"  # data sent by a server SDK (RoomService.send_data) has no participant
PEER_ID = "livekit"  # in LiveKit mode the room's one "peer" is the SFU; fan-out is its job
LISTEN_RATE = VAD_RATE  # 16 kHz: the SDK resamples (and downmixes) before Python sees a frame


class RoomPublisher(Protocol):
    """What the transport sends into one connected LiveKit room. The default wraps
    `room.local_participant`; tests inject their own (no LiveKit server runs there)."""

    async def publish_track(self, track: rtc.LocalAudioTrack) -> str:
        """Publish the agent's audio track; returns its track sid."""

    async def publish_data(self, payload: bytes, *, topic: str, destination_identities: list[str]) -> None: ...

    async def publish_text(self, text: str, *, topic: str, attributes: dict[str, str]) -> None: ...

    async def publish_transcription(self, transcription: rtc.Transcription) -> None:
        """The deprecated transcription packet (older LiveKit UIs read only these)."""

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        """Update the agent participant's attributes (needs canUpdateOwnMetadata)."""

    def set_subscribed(self, publication: rtc.RemoteTrackPublication, subscribed: bool) -> None:
        """Ask the server to start or stop sending a remote track to the agent."""


class LocalParticipantPublisher:
    def __init__(self, room: rtc.Room):
        self.room = room

    async def publish_track(self, track: rtc.LocalAudioTrack) -> str:
        # SOURCE_MICROPHONE: LiveKit UIs treat it as the agent's voice (visualisers, transcripts)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        publication = await self.room.local_participant.publish_track(track, options)
        return publication.sid

    async def publish_data(self, payload: bytes, *, topic: str, destination_identities: list[str]) -> None:
        await self.room.local_participant.publish_data(payload, reliable=True, topic=topic,
                                                       destination_identities=destination_identities)

    async def publish_text(self, text: str, *, topic: str, attributes: dict[str, str]) -> None:
        writer = await self.room.local_participant.stream_text(topic=topic, attributes=attributes)
        await writer.write(text)
        await writer.aclose()

    async def publish_transcription(self, transcription: rtc.Transcription) -> None:
        await self.room.local_participant.publish_transcription(transcription)

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        await self.room.local_participant.set_attributes(attributes)

    def set_subscribed(self, publication: rtc.RemoteTrackPublication, subscribed: bool) -> None:
        publication.set_subscribed(subscribed)


class AudioPump:
    """Clock frames → `AudioSource.capture_frame`, awaited in order by one task."""

    def __init__(self, source: rtc.AudioSource, backlog: int = AUDIO_BACKLOG_FRAMES):
        self.source = source
        self.backlog = backlog
        self._waiting: deque[rtc.AudioFrame] = deque()
        self._free: list[rtc.AudioFrame] = []  # frames whose capture finished: reused, no allocation
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.captured = 0
        self.dropped = 0  # frames thrown away because capture fell behind
        self.cleared = 0  # interrupts that cleared the source's queue
        self.errors = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="livekit-audio")

    def push(self, pcm: np.ndarray) -> None:
        frame = self._free.pop() if self._free else rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME_SAMPLES)
        np.copyto(np.frombuffer(frame.data, dtype=np.int16), pcm)  # the Speaker reuses its buffer
        self._waiting.append(frame)
        if len(self._waiting) > self.backlog:
            self._free.append(self._waiting.popleft())
            self.dropped += 1
        self._wake.set()

    def discard(self) -> None:
        """Drop every frame not yet played: ours and the source's queue (interrupt)."""
        self._free.extend(self._waiting)
        self._waiting.clear()
        self.source.clear_queue()
        self.cleared += 1

    @property
    def pending(self) -> int:
        return len(self._waiting)

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            frame = self._waiting.popleft()
            try:
                await self.source.capture_frame(frame)
                self.captured += 1
            except Exception:  # a source closed under us: the room is going away
                self.errors += 1
                log.debug("capture_frame failed", exc_info=True)
            self._free.append(frame)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._waiting.clear()


class Outbox:
    """Data packets and transcriptions, sent in order by one task."""

    def __init__(self, limit: int = OUTBOX_LIMIT):
        self._queue: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue(limit)
        self._task: asyncio.Task | None = None
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="livekit-outbox")

    def put(self, send: Callable[[], Awaitable[None]]) -> None:
        try:
            self._queue.put_nowait(send)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _run(self) -> None:
        while True:
            send = await self._queue.get()
            try:
                await send()
                self.sent += 1
            except Exception:  # one failed send (a participant gone) must not stop the rest
                self.failed += 1
                log.debug("livekit send failed", exc_info=True)
            finally:
                self._queue.task_done()

    async def flush(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except asyncio.TimeoutError:
            log.warning("livekit outbox: %d messages unsent at close", self._queue.qsize())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class MicReader:
    """One subscribed microphone track → `rtc.AudioStream` (16 kHz mono) → its `Listener`.

    The task owns the stream and the listener: however it ends (the track or participant
    gone, barge-in off, the room closing), it closes the stream and removes the listener."""

    def __init__(self, listening: Listening, listener: Listener, track: rtc.Track, sid: str):
        self.listening = listening
        self.listener = listener
        self.sid = sid
        self.identity = listener.participant
        self.stream = rtc.AudioStream.from_track(track=track, sample_rate=LISTEN_RATE, num_channels=1)
        self.frames = 0
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"livekit-listen-{sid}")

    async def _run(self) -> None:
        try:
            async for ev in self.stream:
                self.listener.feed_pcm(ev.frame.data, ev.frame.sample_rate)
                self.frames += 1
                if not self.listener.active:
                    return  # barge-in went off (or the room closed): stop reading at once
        finally:
            self.listening.remove(self.listener)
            await self.stream.aclose()

    def stop(self) -> None:
        self.task.cancel()

    async def aclose(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class LiveKitRoomSink:
    """A room's frames into the AudioSource, its events as data packets and transcriptions."""

    def __init__(self, room: Room, session: "LiveKitSession"):
        self.room = room
        self.session = session
        self.closed = False

    def send_frame(self, pcm: np.ndarray, slot: int) -> None:
        self.session.audio.push(pcm)

    def discard_buffered(self) -> None:
        # called before the cut utterance's faded last frame is pushed: what is queued is stale
        self.session.audio.discard()

    def send_event(self, data: str, to: str | None) -> None:
        ev = json.loads(data)  # events are few (per utterance, per caption): not the audio path
        if ev.get("type") == "caption" and ev.get("kind") == "sentence":
            # one transcription segment per sentence, as it starts playing; word captions
            # stay protocol events (LiveKit UIs render whole segments)
            self.session.publish_transcription(ev["text"])
        self.session.publish_event(data.encode(), to)
        self.session.follow_state(ev)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.session.on_room_closed()


@dataclass
class LiveKitSession:
    """The agent in one LiveKit room: the connection, its track, its core Room."""

    name: str
    lk_room: rtc.Room
    publisher: RoomPublisher
    source: rtc.AudioSource
    track: rtc.LocalAudioTrack
    audio: AudioPump
    outbox: Outbox
    track_sid: str = ""
    room: Room | None = None
    participants: set[str] = field(default_factory=set)
    left: asyncio.Event = field(default_factory=asyncio.Event)
    transport: "LiveKitTransport | None" = None
    leaving: bool = False
    identity: str = ""  # the agent's own identity in this room ("" before connecting)
    requested: set[str] = field(default_factory=set)  # mic publications we asked to subscribe
    readers: dict[str, MicReader] = field(default_factory=dict)  # by track publication sid
    agent_state: AgentState = field(default_factory=AgentState)  # lk.agent.state

    @property
    def listening_on(self) -> bool:
        return self.room is not None and not self.room.closed and self.room.speaker.barge_in.mode != "off"

    def publish_event(self, payload: bytes, to: str | None) -> None:
        destinations = [] if to is None else [to]
        self.outbox.put(lambda: self.publisher.publish_data(payload, topic=TOPIC, destination_identities=destinations))

    def publish_transcription(self, text: str) -> None:
        segment_id = f"SG_{secrets.token_hex(6)}"
        attributes = {ATTR_SEGMENT_ID: segment_id, ATTR_FINAL: "true"}
        if self.track_sid:
            attributes[ATTR_TRACK_ID] = self.track_sid
        self.outbox.put(lambda: self.publisher.publish_text(text, topic=TRANSCRIPTION_TOPIC, attributes=attributes))
        if self.track_sid:  # the legacy packet names the track it transcribes: none, no packet
            legacy = legacy_transcription(self.identity, self.track_sid, segment_id, text)
            self.outbox.put(lambda: self.publisher.publish_transcription(legacy))

    def follow_state(self, ev: dict) -> None:
        """Move `lk.agent.state` after a room event (in order with the events: the outbox)."""
        room = self.room
        if room is not None and not room.closed:
            self.send_state(self.agent_state.after_event(ev, room.speaker))

    def send_state(self, state: str | None) -> None:
        if state is not None:
            self.outbox.put(lambda: self.publisher.set_attributes({ATTR_AGENT_STATE: state}))

    def on_room_closed(self) -> None:
        if self.transport is not None and not self.leaving:
            asyncio.get_running_loop().create_task(self.transport.leave(self), name=f"livekit-leave-{self.name}")


async def _connect(room: rtc.Room, url: str, token: str) -> None:
    # no auto-subscribe: microphones are subscribed one by one, only while barge-in is on
    await room.connect(url, token, rtc.RoomOptions(auto_subscribe=False))


def _is_agent(participant: rtc.RemoteParticipant, own_identity: str) -> bool:
    return participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT or participant.identity == own_identity


def _is_microphone(publication: rtc.TrackPublication) -> bool:
    return publication.source == rtc.TrackSource.SOURCE_MICROPHONE and publication.kind == rtc.TrackKind.KIND_AUDIO


class LiveKitTransport:
    """Rooms on a LiveKit server: join (connect + attach), the protocol in, leave.

    `room_factory`, `connect` and `publisher_factory` are injectable so tests can attach a
    real, never-connected `rtc.Room`, emit its events and capture what would be published.
    `listening` holds every listened microphone (barge-in); one per process is enough."""

    def __init__(
        self,
        rooms: RoomRegistry,
        *,
        room_factory: Callable[[], rtc.Room] = rtc.Room,
        connect: Callable[[rtc.Room, str, str], Awaitable[None]] = _connect,
        publisher_factory: Callable[[rtc.Room], RoomPublisher] = LocalParticipantPublisher,
        source_queue_ms: int = SOURCE_QUEUE_MS,
        listening: Listening | None = None,
    ):
        self.rooms = rooms
        self.listening = listening if listening is not None else Listening()
        self.room_factory = room_factory
        self.connect = connect
        self.publisher_factory = publisher_factory
        self.source_queue_ms = source_queue_ms
        self.sessions: dict[str, LiveKitSession] = {}
        self._attaching: LiveKitSession | None = None
        rooms.sink_factory = self._make_sink

    def _make_sink(self, room: Room) -> LiveKitRoomSink:
        assert self._attaching is not None and self._attaching.name == room.name, "rooms open through attach()"
        return LiveKitRoomSink(room, self._attaching)

    async def join(self, url: str, token: str, room_name: str, metadata: str = "") -> LiveKitSession:
        """Connect to `room_name` with `token` and start speaking there; `metadata` is the
        dispatch's (livekit_metadata.py)."""
        if room_name in self.sessions:
            raise ValueError(f"already in room {room_name!r}")
        lk_room = self.room_factory()
        await self.connect(lk_room, url, token)
        try:
            return await self.attach(lk_room, room_name, metadata)
        except BaseException:
            await lk_room.disconnect()
            raise

    async def attach(self, lk_room: rtc.Room, room_name: str, metadata: str = "") -> LiveKitSession:
        """Publish the track on a (connected) room and wire its events to a core Room."""
        source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=self.source_queue_ms)
        track = rtc.LocalAudioTrack.create_audio_track(TRACK_NAME, source)
        session = LiveKitSession(room_name, lk_room, self.publisher_factory(lk_room), source, track,
                                 AudioPump(source), Outbox(), transport=self)
        if lk_room.isconnected():
            session.identity = lk_room.local_participant.identity
        session.track_sid = await session.publisher.publish_track(track)
        self._attaching = session
        try:
            session.room = self.rooms.get_or_create(room_name)
        finally:
            self._attaching = None
        session.room.add_peer(PEER_ID, {"id": PEER_ID, "identity": PEER_ID, "transport": "livekit",
                                        "participants": 0})
        session.audio.start()
        session.outbox.start()
        self.sessions[room_name] = session
        self._wire(session)
        apply_dispatch_metadata(session.room, metadata)  # before the `ready` events name the voice
        # participants already in the room when the agent arrived (none for a fresh room)
        for participant in list(lk_room.remote_participants.values()):
            self._participant_joined(session, participant.identity)
        self._sync_listening(session)  # the agent's settings may have barge-in on from the start
        session.send_state(session.agent_state.joined())
        log.info("joined livekit room", extra={"room": room_name})
        return session

    def _wire(self, session: LiveKitSession) -> None:
        lk_room = session.lk_room

        @lk_room.on("data_received")
        def on_data(packet: rtc.DataPacket) -> None:
            if packet.topic != TOPIC or session.room is None:
                return
            sender = packet.participant.identity if packet.participant is not None else None
            # LiveKit enforces canPublishData at the server: a packet that arrived was allowed
            reply = session.room.receive(packet.data, sender or SERVER_SENDER)
            if reply is not None and sender is not None:
                session.publish_event(_dumps(reply), sender)
            self._sync_listening(session)  # a `configure` may have turned barge-in on or off

        @lk_room.on("track_published")
        def on_published(publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
            self._sync_listening(session)

        @lk_room.on("track_subscribed")
        def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                          participant: rtc.RemoteParticipant) -> None:
            self._track_subscribed(session, track, publication, participant)

        @lk_room.on("track_unsubscribed")
        def on_unsubscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication,
                            participant: rtc.RemoteParticipant) -> None:
            reader = session.readers.pop(publication.sid, None)
            if reader is not None:
                reader.stop()

        @lk_room.on("track_unpublished")
        def on_unpublished(publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
            session.requested.discard(publication.sid)
            reader = session.readers.pop(publication.sid, None)
            if reader is not None:
                reader.stop()

        @lk_room.on("participant_connected")
        def on_joined(participant: rtc.RemoteParticipant) -> None:
            self._participant_joined(session, participant.identity)
            self._sync_listening(session)  # tracks it published before joining come with it

        @lk_room.on("participant_disconnected")
        def on_left(participant: rtc.RemoteParticipant) -> None:
            session.participants.discard(participant.identity)
            for sid in participant.track_publications:
                session.requested.discard(sid)
            for sid, reader in list(session.readers.items()):
                if reader.identity == participant.identity:
                    del session.readers[sid]
                    reader.stop()
            room = session.room
            if room is None or room.closed:
                return
            room.speaker.drop_sender(participant.identity)  # its queued lines do not outlive it
            room.peers.get(PEER_ID, {})["participants"] = len(session.participants)
            if not session.participants:
                # everyone left: the core room's grace period decides when the agent leaves
                room.remove_peer(PEER_ID, self.rooms.close_room)

        @lk_room.on("disconnected")
        def on_disconnected(reason=None) -> None:
            if not session.leaving:
                asyncio.get_running_loop().create_task(self.leave(session), name=f"livekit-leave-{session.name}")

    # -- barge-in: microphones in ---------------------------------------------------------

    def _sync_listening(self, session: LiveKitSession) -> None:
        """Subscribe to every participant's microphone while barge-in is on; while it is off,
        unsubscribe and stop reading. Cheap when nothing changed: a walk over the room's
        publications (rooms are small) and no server request."""
        on = session.listening_on and not session.leaving
        for participant in list(session.lk_room.remote_participants.values()):
            if _is_agent(participant, session.identity):
                continue
            for publication in list(participant.track_publications.values()):
                if not _is_microphone(publication):
                    continue
                if on and publication.sid not in session.requested:
                    self._subscribe(session, publication, True)
                elif not on and publication.sid in session.requested:
                    self._subscribe(session, publication, False)
        if not on:
            for reader in session.readers.values():
                reader.stop()
            session.readers.clear()

    def _subscribe(self, session: LiveKitSession, publication: rtc.RemoteTrackPublication, subscribed: bool) -> None:
        if subscribed:
            session.requested.add(publication.sid)
        else:
            session.requested.discard(publication.sid)
        try:
            session.publisher.set_subscribed(publication, subscribed)
        except Exception:  # the publication went away under us: nothing left to (un)subscribe
            log.debug("set_subscribed(%s) failed", subscribed, exc_info=True)

    def _track_subscribed(self, session: LiveKitSession, track: rtc.Track, publication: rtc.RemoteTrackPublication,
                          participant: rtc.RemoteParticipant) -> None:
        if not _is_microphone(publication) or _is_agent(participant, session.identity):
            return
        if not session.listening_on or session.leaving:
            # barge-in went off between asking and getting the track: no stream, let it go
            self._subscribe(session, publication, False)
            return
        old = session.readers.pop(publication.sid, None)
        if old is not None:
            old.stop()
        session.requested.add(publication.sid)
        listener = self.listening.listen(session.room, participant.identity)
        session.readers[publication.sid] = MicReader(self.listening, listener, track, publication.sid)

    def _participant_joined(self, session: LiveKitSession, identity: str) -> None:
        room = session.room
        if room is None or room.closed:
            return
        session.participants.add(identity)
        if PEER_ID not in room.peers:  # back during the grace period
            room.add_peer(PEER_ID, {"id": PEER_ID, "identity": PEER_ID, "transport": "livekit", "participants": 0})
        room.peers[PEER_ID]["participants"] = len(session.participants)
        session.publish_event(_dumps(room.ready_event()), identity)

    async def leave(self, session: LiveKitSession, flush_s: float = 2.0) -> None:
        if session.leaving:
            await session.left.wait()
            return
        session.leaving = True
        room = session.room
        if room is not None and not room.closed:
            room.peers.pop(PEER_ID, None)  # close_room keeps a room that still has peers
            self.rooms.close_room(room, "disconnect")
        readers = list(session.readers.values())
        session.readers.clear()
        await asyncio.gather(*(r.aclose() for r in readers))  # before the room goes: no reads after it
        await session.outbox.flush(flush_s)  # the final `interrupted` events reach the clients
        await session.outbox.aclose()
        await session.audio.aclose()
        if self.sessions.get(session.name) is session:
            del self.sessions[session.name]
        if session.lk_room.isconnected():
            await session.lk_room.disconnect()
        await session.source.aclose()
        session.left.set()
        log.info("left livekit room", extra={"room": session.name})

    def load(self) -> float:
        """0..1: share of this worker's room capacity in use (reported to LiveKit)."""
        return min(1.0, len(self.sessions) / max(1, self.rooms.settings.max_rooms))

    async def drain(self, timeout: float) -> None:
        """Stop taking rooms, let what is speaking finish (at most `timeout`), then leave."""
        self.rooms.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(
                s.room is not None and not s.room.speaker.idle for s in self.sessions.values()):
            await asyncio.sleep(0.1)  # polling a drain at 10 Hz: no event covers "all rooms idle"
        await asyncio.gather(*(self.leave(s) for s in list(self.sessions.values())), return_exceptions=True)
        await self.rooms.close_all()


def _dumps(ev: dict) -> bytes:
    return json.dumps(ev, ensure_ascii=False, separators=(",", ":")).encode()
