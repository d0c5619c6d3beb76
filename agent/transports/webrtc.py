"""Embedded rooms over plain WebRTC (aiortc), signalled with WHEP (RFC 9725).

Each room encodes a frame to Opus once and hands the same `av.Packet` to every peer's
track; aiortc packs pre-encoded packets without touching them, so per peer only RTP
and SRTP remain. The data channel labelled `tts` carries the room protocol.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import re
import secrets
from collections import deque
from dataclasses import dataclass, field

import aioice.ice
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..audio import FRAME_SAMPLES, SAMPLE_RATE
from ..rooms import Room, RoomLimit, RoomRegistry
from ..settings import Settings, is_loopback

log = logging.getLogger(__name__)

DATA_CHANNEL_LABEL = "tts"
ICE_CONNECT_S = 15.0  # a session whose peer never connects is reaped after this
MAX_MEDIA_SECTIONS = 8
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class OfferError(ValueError):
    """The SDP offer cannot be answered (HTTP 400)."""


def use_ice_addresses(addresses: list[str]) -> None:
    """Offer exactly these host candidates. aioice has no per-connection setting for this,
    so the agent sets it for the process once, from its settings."""
    chosen = list(addresses)
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: list(chosen)


def configure_ice(settings: Settings) -> None:
    # A peer that vanishes without a DTLS close is found by ICE consent checks: aioice's
    # default (every 5 s, 6 misses) reaps it in ~30 s. Checking every 2 s would find it in
    # ~15 s but measured +47 % CPU for idle rooms (0.058 -> 0.085 % of a core per peer).
    if settings.ice_addresses:
        use_ice_addresses(settings.ice_addresses)
    elif is_loopback(settings.host):
        use_ice_addresses(["127.0.0.1"])  # media never leaves loopback in dev


class PacketTrack(MediaStreamTrack):
    """An audio track whose `recv()` hands out the room's already-encoded Opus packets."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._packets: deque[av.Packet] = deque(maxlen=4)  # a stuck sender never grows memory
        self._waiter: asyncio.Future | None = None

    def push(self, packet: av.Packet) -> None:
        self._packets.append(packet)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> av.Packet:
        while not self._packets:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._packets.popleft()

    def stop(self) -> None:
        super().stop()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class OpusRoomSink:
    """A room's frames, encoded once, to every peer; its events to the data channels."""

    def __init__(self, room: Room, bitrate: int, application: str = "lowdelay", complexity: int = 0):
        self.room = room
        self.tracks: dict[str, PacketTrack] = {}
        self.channels: dict[str, object] = {}
        self._encoder = av.CodecContext.create("libopus", "w")
        self._encoder.sample_rate = SAMPLE_RATE
        self._encoder.layout = "mono"
        self._encoder.format = "s16"
        self._encoder.bit_rate = bitrate
        # 20 ms frames (the RTP ptime); application and complexity: see Settings
        self._encoder.options = {"application": application, "frame_duration": "20",
                                 "compression_level": str(complexity)}
        self._encoder.open()
        self.packets = 0

    def send_frame(self, pcm: np.ndarray, slot: int) -> None:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, FRAME_SAMPLES), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in self._encoder.encode(frame):
            packet.pts = slot * FRAME_SAMPLES  # RTP timestamp follows the clock slot
            packet.time_base = _TIME_BASE
            self.packets += 1
            for track in self.tracks.values():
                track.push(packet)

    def discard_buffered(self) -> None:
        pass  # packets go straight to the peers' senders; nothing waits downstream

    def send_event(self, data: str, to: str | None) -> None:
        if to is None:
            for channel in self.channels.values():
                _send(channel, data)
        else:
            channel = self.channels.get(to)
            if channel is not None:
                _send(channel, data)

    def close(self) -> None:
        for track in self.tracks.values():
            track.stop()
        self.tracks.clear()
        self.channels.clear()


def _send(channel, data: str) -> None:
    if channel.readyState == "open":
        try:
            channel.send(data)
        except Exception:  # a channel closing under us is the peer's problem, not the room's
            log.debug("data channel send failed", exc_info=True)


@dataclass
class WhepSession:
    id: str
    room: Room
    peer_id: str
    identity: str
    pc: RTCPeerConnection
    can_publish: bool
    track: PacketTrack | None = None
    listen_task: asyncio.Task | None = None
    connect_deadline: asyncio.TimerHandle | None = None
    closed: bool = False
    tasks: set = field(default_factory=set)


def check_offer(sdp: str) -> None:
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError("the body is not an SDP offer (it must start with v=0)")
    sections = re.findall(r"^m=(\w+)", sdp, flags=re.M)
    if not sections:
        raise OfferError("the offer has no media section")
    if len(sections) > MAX_MEDIA_SECTIONS:
        raise OfferError(f"the offer has {len(sections)} media sections, at most {MAX_MEDIA_SECTIONS} allowed")
    if "audio" not in sections and "application" not in sections:
        raise OfferError("the offer has neither audio nor a data channel")
    if not re.search(r"^a=fingerprint:", sdp, flags=re.M):
        raise OfferError("the offer has no DTLS fingerprint (a=fingerprint)")


def _opus_only() -> list:
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]


class WebRTCTransport:
    """Embedded rooms: WHEP sessions in, Opus and data channel events out."""

    def __init__(self, rooms: RoomRegistry, settings: Settings):
        self.rooms = rooms
        self.settings = settings
        self.sessions: dict[str, WhepSession] = {}
        rooms.sink_factory = lambda room: OpusRoomSink(
            room, settings.opus_bitrate, settings.opus_application, settings.opus_complexity)
        self.on_listen = None  # set by barge-in: (session, remote track) -> None
        configure_ice(settings)

    async def answer(self, room_name: str, offer_sdp: str, identity: str, *, can_publish: bool = True) -> WhepSession:
        check_offer(offer_sdp)
        room = self.rooms.get_or_create(room_name)
        session_id = secrets.token_urlsafe(12)
        peer_id = f"{identity}#{session_id[:6]}"
        room.add_peer(peer_id, {"id": peer_id, "identity": identity, "transport": "webrtc"})
        pc = RTCPeerConnection()
        session = WhepSession(session_id, room, peer_id, identity, pc, can_publish)
        self.sessions[session_id] = session
        try:
            await self._negotiate(session, offer_sdp)
        except Exception as exc:
            await self.end(session_id)
            if isinstance(exc, (OfferError, RoomLimit)):
                raise
            raise OfferError(f"cannot answer this offer: {exc}") from None
        session.connect_deadline = asyncio.get_running_loop().call_later(
            ICE_CONNECT_S, lambda: self._expire_unconnected(session))
        return session

    def _expire_unconnected(self, session: WhepSession) -> None:
        if not session.closed and session.pc.connectionState != "connected":
            log.info("peer never connected", extra={"room": session.room.name, "peer": session.peer_id})
            task = asyncio.ensure_future(self.end(session.id))
            session.tasks.add(task)
            task.add_done_callback(session.tasks.discard)

    async def _negotiate(self, session: WhepSession, offer_sdp: str) -> None:
        pc = session.pc
        sink: OpusRoomSink = session.room.sink  # type: ignore[assignment]

        @pc.on("datachannel")
        def on_datachannel(channel) -> None:
            if channel.label != DATA_CHANNEL_LABEL:
                return
            sink.channels[session.peer_id] = channel

            @channel.on("message")
            def on_message(message) -> None:
                reply = session.room.receive(message, session.peer_id, can_publish=session.can_publish)
                if reply is not None:
                    _send(channel, _dumps(reply))

            if channel.readyState == "open":
                _send(channel, _dumps(session.room.ready_event()))
            else:
                channel.on("open", lambda: _send(channel, _dumps(session.room.ready_event())))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.end(session.id)

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "audio" and self.on_listen is not None:
                self.on_listen(session, track)

        if re.search(r"^m=audio", offer_sdp, flags=re.M):
            # Created before the offer is applied, so it takes the first audio section and
            # only Opus is negotiated. sendrecv: the answer becomes sendonly for a recvonly
            # offer, and sendrecv when the client also sends its microphone (barge-in).
            session.track = PacketTrack()
            transceiver = pc.addTransceiver(session.track, direction="sendrecv")
            transceiver.setCodecPreferences(_opus_only())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        if session.track is not None:
            sink.tracks[session.peer_id] = session.track

    async def end(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None or session.closed:
            return False
        session.closed = True
        if session.connect_deadline is not None:
            session.connect_deadline.cancel()
        sink = session.room.sink
        if isinstance(sink, OpusRoomSink):
            sink.tracks.pop(session.peer_id, None)
            sink.channels.pop(session.peer_id, None)
        if session.track is not None:
            session.track.stop()
        if session.listen_task is not None:
            session.listen_task.cancel()
        session.room.remove_peer(session.peer_id, self.rooms.close_room)
        log.info("peer left", extra={"room": session.room.name, "peer": session.peer_id})
        await session.pc.close()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(self.end(sid) for sid in list(self.sessions)), return_exceptions=True)


def _dumps(ev: dict) -> str:
    import json

    return json.dumps(ev, ensure_ascii=False, separators=(",", ":"))
